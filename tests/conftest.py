"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A private local Ray for the test session (DESIGN section 7): 2 CPUs, no dashboard,
    a 200 MB object store, worker logs kept out of the output.

    ``address="local"`` always starts a new instance, so each pytest-xdist worker (a separate
    process) gets its own Ray and never joins another worker's or a ``ray start`` cluster.
    Only this instance is shut down; never ``ray stop``.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():  # someone in this process already started one: share it
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
