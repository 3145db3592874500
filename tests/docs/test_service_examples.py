"""docs/service.md and examples/service/ say what the service does: the example config
loads, the Argo Rollouts and Flagger examples call routes that exist (and read a field the
verdict has), and the routes, metrics and config fields the documentation names are exactly
the service's."""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "service.md"
EXAMPLES = ROOT / "examples" / "service"
CONFIG = EXAMPLES / "service.yaml"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def config_env() -> dict[str, str]:
    """The token variables the example config names, with made-up values."""
    data = yaml.safe_load(CONFIG.read_text())
    names = [t["env"] for t in data.get("auth", {}).get("tokens", []) if "env" in t]
    assert names, "the example config takes no token from the environment"
    return {name: f"example-{name.lower()}-0123456789" for name in names}


@pytest.fixture
def example_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    from shadowrl.service.config import load_service_config

    for name, value in config_env().items():
        monkeypatch.setenv(name, value)
    return load_service_config(CONFIG)


@pytest.fixture
def app(example_config: Any, tmp_path: Path) -> Any:
    """The API of the example config, built as server.py builds it (a fresh SQLite file;
    the scheduler is made but never started, nothing is served)."""
    from shadowrl.service.api import create_app
    from shadowrl.service.scheduler import Scheduler
    from shadowrl.service.state import ServiceState
    from shadowrl.service.store import Store, migrate

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(store.engine)
    scheduler = Scheduler(example_config, CONFIG, store)
    yield create_app(ServiceState(example_config, store, scheduler))
    store.close()


def openapi_routes(app: Any) -> set[tuple[str, str]]:
    """(METHOD, path) of every route in the OpenAPI schema, path parameters as ``{}``."""
    out = set()
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            out.add((method.upper(), normal(path)))
    return out


def all_routes(app: Any) -> set[tuple[str, str]]:
    """Every route the app answers, also those left out of the schema (``/``, the
    dashboard's mount, ``/docs``)."""
    out = set()
    for route in app.routes:
        path = normal(route.path)
        for method in getattr(route, "methods", None) or {"GET"}:
            out.add((method, path))
        if not getattr(route, "methods", None):  # a mount: its folder
            out.add(("GET", path.rstrip("/") + "/"))
    return out


def normal(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_routes() -> set[tuple[str, str]]:
    """``METHOD /path`` in code spans and in the route table of docs/service.md."""
    found = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)`", doc_text())
    return {(method, normal(path)) for method, path in found}


# --------------------------------------------------------------------------- the example config


def test_the_example_config_loads(example_config: Any) -> None:
    assert [d.name for d in example_config.deployments] == ["checkout", "payments"]
    assert all(t.env for t in example_config.auth.tokens)  # no token in the file itself
    scopes = {t.scope for t in example_config.auth.tokens}
    assert scopes == {"read", "write"}


def test_the_example_config_needs_its_token_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from shadowrl.core.spec import SpecError
    from shadowrl.service.config import load_service_config

    for name in config_env():
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SpecError) as caught:
        load_service_config(CONFIG)
    assert all(name in str(caught.value) for name in config_env())


# --------------------------------------------------------------------------- rollout tools


def test_the_argo_analysis_template_reads_the_verdict(app: Any, example_config: Any) -> None:
    from shadowrl.service.schemas import Verdict

    template = yaml.safe_load((EXAMPLES / "argo-analysis-template.yaml").read_text())
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    assert template["kind"] == "AnalysisTemplate"
    args = {a["name"]: a for a in template["spec"]["args"]}
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web.get("method", "GET") == "GET"
    assert metric["successCondition"] == "result == true"
    assert web["jsonPath"] == "{$.healthy}"
    # the URL, its arguments filled in, names the verdict route of a configured deployment
    url = re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: args[m.group(1)]["value"],
                 web["url"])
    path = urlparse(url).path
    name = args["deployment"]["value"]
    assert path == f"/api/v1/deployments/{name}/verdict"
    assert ("GET", "/api/v1/deployments/{}/verdict") in openapi_routes(app)
    assert example_config.deployment(name) is not None
    # the field the jsonPath reads is the verdict's boolean
    assert Verdict.model_fields["healthy"].annotation is bool
    # the bearer token comes from a Secret, never from the file
    (header,) = web["headers"]
    assert header["key"] == "Authorization"
    token_arg = re.fullmatch(r"Bearer \{\{\s*args\.([\w-]+)\s*\}\}", header["value"])
    assert token_arg, header["value"]
    assert "secretKeyRef" in args[token_arg.group(1)]["valueFrom"]


def test_the_flagger_canary_calls_the_gate(app: Any, example_config: Any) -> None:
    from shadowrl.service.schemas import FlaggerPayload

    canary = yaml.safe_load((EXAMPLES / "flagger-canary.yaml").read_text())
    assert canary["apiVersion"] == "flagger.app/v1beta1" and canary["kind"] == "Canary"
    (hook,) = canary["spec"]["analysis"]["webhooks"]
    assert hook["type"] == "pre-rollout"
    assert set(hook) <= {"name", "type", "url", "timeout", "metadata", "retries",
                         "disableTLS", "muteAlert"}, "a field Flagger's webhooks do not have"
    match = re.fullmatch(r"/api/v1/deployments/([a-z0-9-]+)/gate", urlparse(hook["url"]).path)
    assert match, hook["url"]
    assert example_config.deployment(match.group(1)) is not None
    assert ("POST", "/api/v1/deployments/{}/gate") in openapi_routes(app)
    # what Flagger posts (docs.flagger.app, webhooks) is a body the gate accepts
    FlaggerPayload.model_validate({"name": "checkout", "namespace": "shop",
                                   "phase": "Progressing", "checksum": "85d557f47b",
                                   "metadata": hook.get("metadata", {})})


def test_the_dockerfile(tmp_path: Path) -> None:
    """No registry is reachable here to build it: its instructions are checked instead."""
    lines = (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [shlex.split(line, comments=False) for line in lines
                    if line.strip() and not line.lstrip().startswith("#")]
    known = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "VOLUME", "EXPOSE",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL"}
    assert all(i[0] in known for i in instructions), [i[0] for i in instructions]
    by = {}
    for inst in instructions:
        by.setdefault(inst[0], []).append(" ".join(inst[1:]))
    assert instructions[0][0] == "ARG" and instructions[1][:2] == ["FROM", "${BASE}"]
    runs = by["RUN"]
    assert runs[0] == ("pip install torch==2.13.0 --index-url "
                       "https://download.pytorch.org/whl/cpu")
    assert any("pip install" in r and ".[" in r for r in runs[1:])
    assert by["USER"] and by["USER"][-1] not in ("root", "0")
    assert by["EXPOSE"] == ["8080"]
    assert "/healthz" in by["HEALTHCHECK"][0]
    text = (EXAMPLES / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["shadowrl", "serve"]' in text
    for copied in by["COPY"]:  # what it copies exists in the build context (the root)
        for source in copied.split()[:-1]:
            assert (ROOT / source).exists(), source


# --------------------------------------------------------------------------- docs/service.md


def test_every_route_is_documented_and_every_documented_route_exists(app: Any) -> None:
    documented = documented_routes()
    schema = openapi_routes(app)
    missing = schema - documented
    assert not missing, f"routes docs/service.md does not document: {sorted(missing)}"
    unknown = documented - all_routes(app)
    assert not unknown, f"docs/service.md documents routes the service lacks: {sorted(unknown)}"


def emitted_metrics(tmp_path: Path) -> set[str]:
    """The metric names /metrics exposes, from a store with a deployment, a verdict, a
    sync and jobs (so every family has a sample)."""
    from shadowrl.service.metrics import registry_for, render
    from shadowrl.service.store import Store, migrate

    store = Store(f"sqlite:///{tmp_path / 'metrics.db'}")
    migrate(store.engine)
    try:
        store.upsert_deployment("checkout", "envs/checkout.yaml", "sim")
        store.record_sync("checkout", [])
        job = store.add_job("checkout", "rehearse", "trigger", {"runs": 1}, total=1)
        store.start_job(job.id, 1, str(tmp_path))
        store.finish_job(job.id, "succeeded", result={}, verdict={
            "healthy": True, "rehearsed_at": 0.0, "recovered_share": 1.0,
            "downtime_s": {"mean": 1.0}, "budget_burn": {"mean": 0.1}})
        store.add_job("checkout", "optimize", "trigger", {})
        text = render(registry_for(store, ["checkout"])).decode()
    finally:
        store.close()
    types = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    samples = set(re.findall(r"^([a-z_]+)[{ ]", text, re.MULTILINE))
    assert types == samples, (types, samples)  # every family has a sample
    return types


def test_every_metric_is_documented_and_every_documented_metric_is_emitted(
        tmp_path: Path) -> None:
    emitted = emitted_metrics(tmp_path)
    documented = set(re.findall(r"\bshadowrl_[a-z_]+\b", doc_text()))
    assert documented == emitted, (f"documented only: {sorted(documented - emitted)}; "
                                   f"emitted only: {sorted(emitted - documented)}")


def config_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of the config file, as the documentation writes it: dotted, ``[]`` for
    a list's items, by the name the YAML uses (its alias)."""
    out = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        out.append(key)
        for inner in _models(field.annotation):
            list_of = typing.get_origin(field.annotation) is list
            out += config_fields(inner, key + ("[]." if list_of else "."))
    return out


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def test_every_config_field_is_documented() -> None:
    from shadowrl.service.config import ServiceConfig

    fields = config_fields(ServiceConfig)
    assert "deployments[].rehearse.every" in fields and "auth.tokens[].sha256" in fields
    text = doc_text()
    missing = [f for f in fields if f"`{f}`" not in text]
    assert not missing, f"config fields docs/service.md does not document: {missing}"
