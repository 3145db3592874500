"""The environment that points a ``shadowrl`` subprocess at the session's daemon."""

from __future__ import annotations

from shadowrl.shadow.docker.daemon import DockerUnavailable, docker_host


def docker_host_env() -> dict[str, str]:
    """``DOCKER_HOST`` of the daemon that answers now, or nothing: tests that need a daemon
    ask for ``docker_client``; the flag and load checks must run without one."""
    try:
        return {"DOCKER_HOST": docker_host()}
    except DockerUnavailable:
        return {}
