"""A live deployment from a compose file: what ``docker compose up`` would run.

``services:`` each become a component: ``image`` (its tag is the version unless a
``shadowrl.version`` label says otherwise), ``deploy.replicas`` (or ``scale``, else 1),
``labels`` (and ``deploy.labels``) for what the image cannot say, ``depends_on`` as calls
unless a ``shadowrl.calls`` label declares them, and the environment (``environment`` and
the ``env_file`` contents) hashed as the config identity. ``${VAR}``, ``${VAR:-default}``
and ``${VAR-default}`` are interpolated from the process environment, as compose does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadowrl.live.sync.model import (
    LiveComponent,
    LiveDeployment,
    SourceError,
    component,
    deployment,
    shadowrl_labels,
)

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])"
                  r"(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def load_yaml_documents(path: Path) -> list[Any]:
    """The YAML documents of ``path``, read round-trip so every mapping knows its line
    (``line_of``); a file that cannot be read or parsed is a :class:`SourceError` naming
    its line."""
    try:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError
    except ImportError as exc:
        from shadowrl.core.extras import missing_extra
        raise missing_extra("live", exc) from exc

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    try:
        return [d for d in YAML(typ="rt").load_all(text) if d is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise SourceError(f"{path}:{line}: YAML syntax error: {exc.problem or exc}") from None
    except YAMLError as exc:
        raise SourceError(f"{path}:1: YAML error: {exc}") from None


def line_of(node: Any, key: Any = None) -> int:
    """The 1-based line of ``node`` (or of its ``key``) in a round-trip document; 1 if
    unknown (a node built in memory)."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return 1
    try:
        if key is None:
            return int(lc.line) + 1
        return int(lc.key(key)[0] if isinstance(node, Mapping) else lc.item(key)[0]) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        return int(getattr(lc, "line", 0) or 0) + 1


def interpolate(value: Any, env: Mapping[str, str], where: str) -> Any:
    """``value`` with compose's ``$VAR``/``${VAR:-default}`` replaced in every string."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group("braced") or match.group("plain")
            op, arg = match.group("op"), match.group("arg") or ""
            current = env.get(name)
            unset = current is None or (op is not None and op.startswith(":") and not current)
            if op in (":-", "-") and unset:
                return arg
            if op in (":?", "?") and unset:
                raise SourceError(f"{where}: variable {name} is not set: {arg}")
            return current or ""
        return _VAR.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: interpolate(v, env, where) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, where) for v in value]
    return value


def _pairs(value: Any, where: str) -> dict[str, str]:
    """A compose mapping-or-list (``labels``, ``environment``): ``{K: V}`` or ``["K=V"]``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for item in value:
            key, _, val = str(item).partition("=")
            out[key] = val
        return out
    raise SourceError(f"{where}: expected a mapping or a list of KEY=VALUE")


def _env_files(value: Any, folder: Path, where: str) -> dict[str, str]:
    """The ``env_file`` entries' text, by path: their content is configuration too."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    out: dict[str, str] = {}
    for item in items:
        path_text = item.get("path") if isinstance(item, Mapping) else item
        required = not isinstance(item, Mapping) or item.get("required", True)
        path = folder / str(path_text)
        try:
            out[f"env_file:{path_text}"] = path.read_text(encoding="utf-8")
        except OSError as exc:
            if required:
                raise SourceError(f"{where}: env_file {path_text}: cannot read: "
                                  f"{exc.strerror or exc}") from None
    return out


def _replicas(svc: Mapping[str, Any], where: str) -> int:
    deploy = svc.get("deploy") or {}
    value = deploy.get("replicas") if isinstance(deploy, Mapping) else None
    if value is None:
        value = svc.get("scale", 1)
    try:
        replicas = int(str(value))
    except ValueError:
        raise SourceError(f"{where}: replicas: must be a whole number, got {value!r}") from None
    if replicas < 0:
        raise SourceError(f"{where}: replicas: must be >= 0, got {replicas}")
    return replicas


def read_compose(path: Path, env: Mapping[str, str] | None = None) -> LiveDeployment:
    """The deployment a compose file describes. Raises :class:`SourceError` (file:line)."""
    env = dict(os.environ if env is None else env)
    docs = load_yaml_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise SourceError(f"{path}:1: a compose file is one mapping with 'services:'")
    top = docs[0]
    services = top.get("services")
    if not isinstance(services, Mapping) or not services:
        raise SourceError(f"{path}:{line_of(top, 'services') if 'services' in top else 1}: "
                          f"services: a compose file needs a mapping of services")
    project = str(top.get("name") or path.resolve().parent.name)
    warnings: list[str] = []
    comps: list[LiveComponent] = []
    for raw_name, raw in services.items():
        where = f"{path}:{line_of(services, raw_name)}: services.{raw_name}"
        if not isinstance(raw, Mapping):
            raise SourceError(f"{where}: expected a mapping")
        svc = interpolate(raw, env, where)
        replicas = _replicas(svc, where)
        if replicas == 0:
            warnings.append(f"{where}: 0 replicas: left out")
            continue
        deploy = svc.get("deploy") if isinstance(svc.get("deploy"), Mapping) else {}
        labels = {**_pairs(deploy.get("labels"), f"{where}.deploy.labels"),
                  **_pairs(svc.get("labels"), f"{where}.labels")}
        image = svc.get("image")
        if image is None and svc.get("build") is not None:
            image = f"{project}-{raw_name}"  # what compose tags a built image
        elif image is None:
            raise SourceError(f"{where}: needs 'image' or 'build'")
        depends = svc.get("depends_on")
        calls = list(depends) if isinstance(depends, (Mapping, list)) else None
        config = {**_pairs(svc.get("environment"), f"{where}.environment"),
                  **_env_files(svc.get("env_file"), path.parent, where)}
        made = component(str(raw_name), shadowrl_labels(labels), replicas=replicas,
                         image=str(image), config_data=config,
                         calls=[str(c) for c in calls] if calls is not None else None,
                         where=where, warnings=warnings)
        if made is not None:
            comps.append(made)
    return deployment(f"compose:{path}", comps, warnings)
