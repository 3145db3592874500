"""Schemathesis over the real service's OpenAPI schema: every operation, valid and invalid
inputs, with a write token (triggers and cancels too), a read token and none. No answer may
be a server error, and every answer is JSON or the text type its route serves.

Bounded: a fixed number of derandomized examples per operation and generation mode, no
shrinking, no example database, and the long poll's ``wait`` clamped to a fraction of a
second, so the run takes the same requests every time.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase

from shadowrl.service.api import FORMAT_TYPES
from tests.service.conftest import READ_TOKEN, WRITE_TOKEN, Service

schemathesis = pytest.importorskip("schemathesis", minversion="4")  # the dev extra
requests = pytest.importorskip("requests")  # schemathesis' HTTP client

# triggers are allowed often enough that 429 hides no path behind it
LIMITS = "limits: {triggers_per_minute: 10000, trigger_burst: 1000, max_queued_jobs: 10000}\n"
# the text types a route serves besides JSON (FORMAT_TYPES: the procedure's export formats)
TEXT_TYPES = {"/metrics": ("text/plain",),
              "/api/v1/deployments/{name}/procedure": tuple(FORMAT_TYPES.values())}
MAX_WAIT_S = 0.2  # GET /api/v1/jobs/{job_id}?wait= holds a request up to 30 s otherwise


def media_type(response: Any) -> str:
    """The answer's media type (schemathesis keeps each header as a list of values)."""
    values = response.headers.get("content-type") or [""]
    return values[0].split(";")[0].strip().lower()


def check_response(path: str, response: Any) -> str | None:
    """Why this answer is wrong, or None."""
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.content[:300]!r}"
    kind = media_type(response)
    if kind == "application/json":
        try:
            json.loads(response.content)
        except ValueError:
            return f"HTTP {response.status_code}: application/json that is not JSON"
        return None
    if kind not in TEXT_TYPES.get(path, ()):
        return f"HTTP {response.status_code}: unexpected content type {kind!r}"
    return None


def fuzz(svc: Service, schema: Any, token: str | None, examples: int,
         problems: list[str], statuses: Counter[int]) -> None:
    """Every operation, positive and negative examples, answers checked; the failing
    requests are collected in ``problems`` (not raised, so nothing shrinks)."""
    # a connection per request: on a kept-alive one every answer after the first waits for
    # the client's delayed ACK (~40 ms) while the service's sockets lack TCP_NODELAY
    session = requests.Session()
    session.headers["Connection"] = "close"
    for result in schema.get_all_operations():
        for mode in (schemathesis.GenerationMode.POSITIVE,
                     schemathesis.GenerationMode.NEGATIVE):
            fuzz_operation(svc, session, result.ok(), mode, token, examples, problems,
                           statuses)


def fuzz_operation(svc: Service, session: requests.Session, operation: Any, mode: Any,
                   token: str | None, examples: int, problems: list[str],
                   statuses: Counter[int]) -> None:
    @hypothesis.settings(max_examples=examples, derandomize=True, deadline=None,
                         database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if isinstance(case.query, dict) and "wait" in case.query:
            try:
                case.query["wait"] = min(float(case.query["wait"]), MAX_WAIT_S)
            except (TypeError, ValueError):
                pass  # an invalid wait is answered with 422 at once
        headers = {k: v for k, v in (case.headers or {}).items()
                   if k.lower() != "authorization"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        case.headers = headers
        response = case.call(base_url=svc.url, session=session, timeout=20)
        statuses[response.status_code] += 1
        why = check_response(operation.path, response)
        if why is not None:
            problems.append(f"{operation.method.upper()} {operation.path} ({mode.value}, "
                            f"token={'yes' if token else 'none'}): {why}\n    "
                            f"{case.as_curl_command()}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # no invalid input exists for an operation without parameters or body
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label


@pytest.fixture
def fuzz_service(service_factory: Any) -> Service:
    return service_factory(extra=LIMITS)


def test_openapi_schema_fuzz_has_no_server_error(fuzz_service: Service) -> None:
    svc = fuzz_service
    config = schemathesis.Config()
    schema = schemathesis.openapi.from_url(svc.url + "/openapi.json", config=config,
                                           timeout=10)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    problems: list[str] = []
    statuses: Counter[int] = Counter()
    for token, examples in ((WRITE_TOKEN, 30), (READ_TOKEN, 8), (None, 4)):
        fuzz(svc, schema, token, examples, problems, statuses)
    assert not problems, "\n".join(problems[:20])
    # the run reached past auth and validation: triggers were queued, reads answered
    assert statuses[202] > 0 and statuses[200] > 0 and statuses[422] > 0, statuses
    assert statuses[401] > 0 and statuses[403] > 0, statuses
    # the service is still up and answers
    assert svc.request("GET", "/readyz", token=None)[0] == 200
