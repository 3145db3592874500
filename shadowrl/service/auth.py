"""Bearer tokens with read and write scopes.

Only SHA-256 digests of the tokens are held, and a presented token is compared with every
one of them with ``hmac.compare_digest`` (no early exit, so the time taken says nothing
about which token nearly matched). Tokens never reach a log line: the service logs the
token's configured *name*, never its value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from shadowrl.service.config import ServiceConfig

SCOPES = {"read": 1, "write": 2}  # write includes read


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        return SCOPES[self.scope] >= SCOPES[needed]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenTable:
    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self.entries = entries

    @classmethod
    def from_config(cls, cfg: ServiceConfig) -> TokenTable:
        entries = []
        for token in cfg.auth.tokens:
            if token.sha256 is not None:
                value = bytes.fromhex(token.sha256)
            elif token.env is not None:
                value = digest(os.environ[token.env])
            else:
                assert token.file is not None
                value = digest(cfg.path_of(token.file).read_text().strip())
            entries.append((value, Principal(token.name, token.scope)))
        return cls(entries)

    def lookup(self, presented: str) -> Principal | None:
        wanted = digest(presented)
        found = None
        for value, principal in self.entries:
            if hmac.compare_digest(value, wanted):
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, None without one."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
