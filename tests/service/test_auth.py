"""Bearer tokens: the table built from the config (env, file or SHA-256), scopes, and the
``Authorization`` header's parsing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shadowrl.service.auth import Principal, TokenTable, bearer, digest
from shadowrl.service.config import load_service_config

SCENARIO = Path(__file__).resolve().parents[2] / "envs" / "checkout.yaml"


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TokenTable:
    monkeypatch.setenv("SHADOWRL_TEST_DASHBOARD", "dashboard-token")
    (tmp_path / "ops.token").write_text("ops-token\n")
    ci = hashlib.sha256(b"ci-token").hexdigest()
    path = tmp_path / "service.yaml"
    path.write_text(f"""apiVersion: shadowrl/v1
kind: Service
auth:
  tokens:
    - {{name: dashboard, env: SHADOWRL_TEST_DASHBOARD}}
    - {{name: ops, scope: write, file: ops.token}}
    - {{name: ci, scope: write, sha256: {ci}}}
deployments:
  - {{name: checkout, scenario: {SCENARIO}}}
""")
    return TokenTable.from_config(load_service_config(path))


def test_lookup_finds_each_source_with_its_scope(table: TokenTable) -> None:
    assert table.lookup("dashboard-token") == Principal("dashboard", "read")
    assert table.lookup("ops-token") == Principal("ops", "write")  # the file, stripped
    assert table.lookup("ci-token") == Principal("ci", "write")
    for wrong in ("", "ops-token\n", "OPS-TOKEN", "ops-toke", "ops-token ", "ci",
                  hashlib.sha256(b"ci-token").hexdigest(), "\udc80 a lone surrogate"):
        assert table.lookup(wrong) is None, wrong


def test_only_digests_are_held(table: TokenTable) -> None:
    held = [value for value, _ in table.entries]
    assert held == [digest("dashboard-token"), digest("ops-token"), digest("ci-token")]
    assert all(len(value) == 32 for value in held)
    assert b"ops-token" not in b"".join(held)


def test_scopes() -> None:
    reader, writer = Principal("r", "read"), Principal("w", "write")
    assert reader.allows("read") and not reader.allows("write")
    assert writer.allows("read") and writer.allows("write")


def test_an_empty_table_knows_no_one() -> None:
    assert TokenTable([]).lookup("anything") is None


@pytest.mark.parametrize(("header", "token"), [
    (None, None),
    ("", None),
    ("Bearer abc123", "abc123"),
    ("bearer abc123", "abc123"),
    ("BEARER abc123", "abc123"),
    ("Bearer   abc123  ", "abc123"),
    ("Bearer", None),
    ("Bearer ", None),
    ("Bearer    ", None),
    ("Basic dXNlcjpwYXNz", None),
    ("Token abc123", None),
    ("Bearerabc123", None),
    ("abc123", None),
])
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token
