"""Fixtures of the real (Docker) shadow's tests: one daemon and one pair of images per session.

These tests never skip for want of Docker: ``docker_client`` starts a private daemon when
none answers (CI installs docker.io with ``make docker-deps``) and fails with the reason
otherwise. Every test here is marked ``docker`` and put in the xdist group ``docker``, so
that ``--dist loadgroup`` runs them all on one worker: one image build, and no two shadows
competing for two cores.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import docker

    from shadowrl.shadow.docker.images import Images
    from shadowrl.shadow.docker.network import IsolatedNetwork

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under this folder ``docker`` and group it on one xdist worker."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.docker)
            item.add_marker(pytest.mark.xdist_group("docker"))


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of a working daemon (``DOCKER_HOST``, system, or a private one started now).

    The private daemon is left running: it keeps the image cache for the next session.
    """
    from shadowrl.shadow.docker.daemon import DockerUnavailable, connect

    try:
        client = connect(start=True)
    except DockerUnavailable as exc:
        pytest.fail(f"the Docker shadow's tests need a Docker daemon: {exc}", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def shadow_images(docker_client: docker.DockerClient) -> Images:
    """The base and app images, built once (about 70 s from scratch), else found by tag."""
    from shadowrl.shadow.docker.images import ImageBuildError, ensure_images

    try:
        return ensure_images(docker_client)
    except ImageBuildError as exc:
        pytest.fail(f"the Docker shadow's images cannot be built: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def image(shadow_images: Images) -> str:
    """The app image (python3, haproxy 2.6, postgres, redis)."""
    return shadow_images.app


@pytest.fixture(scope="module")
def iso(docker_client: docker.DockerClient, shadow_id: str) -> Iterator[IsolatedNetwork]:
    """One isolated network per module, for a module that overrides ``shadow_id`` with a
    module-scoped one; everything labelled with that id goes with it."""
    from shadowrl.shadow.docker.network import create_isolated_network, remove_isolated_network
    from shadowrl.shadow.docker.sweep import sweep

    net = create_isolated_network(docker_client, shadow_id)
    yield net
    sweep(docker_client, shadow_id=shadow_id, only_dead_owners=False)
    remove_isolated_network(docker_client, net)


def unique_shadow_id(request: pytest.FixtureRequest) -> str:
    """A short id unique to this test and call, usable in container and network names."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].strip("-")
    return f"{slug or 't'}-{secrets.token_hex(3)}"


@pytest.fixture
def shadow_id(request: pytest.FixtureRequest) -> str:
    """A unique shadow id per test (not autouse): label everything the test creates with it."""
    return unique_shadow_id(request)
