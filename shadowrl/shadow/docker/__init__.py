"""The real shadow: the scenario's deployment as Docker containers (see docs/docker-shadow.md)."""
