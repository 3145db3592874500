"""The labels on everything a real shadow creates: what ``close()`` and the sweep remove.

``shadowrl.shadow`` names the shadow; ``shadowrl.owner`` names the process that made it
(``host:pid``), so a start-up sweep removes only what a dead process left behind and never
a shadow another live process (a Ray replica, a parallel test) is using.
"""

from __future__ import annotations

import os
import socket

LABEL = "shadowrl.shadow"
OWNER_LABEL = "shadowrl.owner"
ROLE_LABEL = "shadowrl.role"  # app, lb, datastore, cache, external


def owner() -> str:
    """This process, as the owner label spells it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def labels(shadow_id: str, role: str | None = None) -> dict[str, str]:
    """The labels for one object of shadow ``shadow_id``."""
    out = {LABEL: shadow_id, OWNER_LABEL: owner()}
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def owner_alive(value: str) -> bool:
    """Whether the owner ``host:pid`` is a live process (other hosts count as alive: their
    leftovers are theirs to sweep)."""
    host, _, pid = value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
