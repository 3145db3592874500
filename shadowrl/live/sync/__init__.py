"""Config sync: read a live deployment (Docker, compose, Kubernetes) into a scenario's
``deployment:``, report drift, and follow it (docs/sync.md).

``model`` is what every source reads into; ``docker_source``, ``compose_source`` and
``kube_source`` read; ``merge`` writes a scenario; ``drift`` compares; ``watch`` follows.
"""
