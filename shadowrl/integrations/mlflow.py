"""MLflow integration: runs, metrics, the pyfunc rollback policy and registry aliases.

- :func:`tracking_uri` / :func:`configure`: where runs go (``--tracking-uri``, else
  ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; MLflow 3 no longer writes the
  old ``./mlruns`` file store). A SQLite store is created and migrated under a file lock
  (MLflow's migration races between processes); a server that does not answer fails in
  seconds (:class:`TrackingUnavailable`), not after minutes of retries.
- :func:`process_tags`, :func:`fail_stale_runs`, :func:`end_run`: a run records which
  process runs it, is ended FAILED or KILLED when that process fails or is stopped, and is
  marked FAILED by the next start when its process died without a word.
- :func:`flatten`, :func:`scenario_hash`, :func:`git_commit`: what a run records about its
  inputs (params, the scenario's content hash, the code's commit).
- :class:`MlflowMetricsCallback` (training curves, one batched request per rollout) and
  :func:`log_eval_history` (the :class:`~shadowrl.rl.agents.CostEvalCallback` rows),
  :func:`holdout_metrics` / :func:`log_holdout` (the held-out evaluation that promotion reads).
- :class:`RollbackPolicyModel` and :func:`log_policy_model`: a trained policy as an MLflow
  pyfunc model that turns an observed incident into a rehearsal-backed rollback plan.
- :func:`promote_if_better`: move the ``champion`` alias only to a version that, on the
  *same* held-out incidents, recovers at least as many as the champion and the configured
  procedure and burns less error budget by a paired test (p < 0.05); each version's
  per-incident results are kept (``eval_holdout.json`` on its run, a version tag) for that.
  Decisions are serialised (:func:`promotion_lock`), so concurrent ones cannot both win.
- :func:`load_registered_policy` (``shadowrl evaluate --policy models:/NAME@ALIAS``) and
  :func:`load_export_source` (``shadowrl export RUN_ID|models:/NAME@ALIAS``, through
  :data:`shadowrl.integrations.sources.MLFLOW`).

Needs the ``mlflow`` extra (``pip install 'shadowrl[mlflow]'``), which brings the ``rl`` one.

Artifact layout of a run (what :func:`log_run_files` and :func:`log_policy_model` write and
:func:`load_export_source` reads): ``procedure.yaml``, ``scenario/<scenario file>`` (plus the
files it references by relative path) and, when known, ``summary.json`` (an
``evaluate --json``-shaped summary). The pyfunc model holds the artifacts ``policy`` (the SB3
zip and its ``.json`` sidecar), ``scenario`` and optionally ``procedure``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata as _metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

# MLflow's artifact download bars would interleave with ours on stderr.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow retries a failing HTTP request 7 times with backoff 2 (about 250 s for a server that
# is down) and waits 120 s for an answer. A run keeps its checkpoint and resumes, so fail
# sooner: 4 retries with backoff 1 (about 15 s), 30 s per request. Set them to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


from shadowrl.core.extras import missing_extra

try:
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as exc:
    raise missing_extra("mlflow", exc) from exc
import numpy as np

from shadowrl.core.spec import (
    CsvPattern,
    Procedure,
    Scenario,
    SpecError,
    as_scenario,
    load_procedure,
)
from shadowrl.export.sources import ExportSource, read_header
from shadowrl.integrations.sources import RUN_ID
from shadowrl.rehearsal.verification import Verification, summary_line

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from shadowrl.core.runbook import Runbook
    from shadowrl.rl.agents import SB3Policy
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import Episode

__all__ = [
    "CHAMPION", "HOLDOUT_PREFIX", "MlflowMetricsCallback", "RollbackPolicyModel",
    "TrackingUnavailable", "configure", "end_run", "evaluate_holdout",
    "evaluate_holdout_evidence", "fail_stale_runs", "file_lock", "flatten", "git_commit",
    "holdout_metrics", "holdout_params", "load_export_source", "load_registered_policy",
    "log_eval_history", "log_holdout", "log_params_once", "log_per_seed", "log_policy_model",
    "log_run_files", "log_verification", "paired_test", "parse_model_uri", "per_seed_record",
    "process_alive", "process_tags", "promote_if_better", "promotion_lock", "scenario_hash",
    "tracking_uri", "use_experiment", "verification_metrics",
]

CHAMPION = "champion"
HOLDOUT_PREFIX = "eval_holdout_"
# what promotion reports as new/old; the paired test runs on the per-seed values
PROMOTION_METRICS = {"budget_burn_mean": "budget_burn", "downtime_mean": "downtime_s"}
LOWER_IS_BETTER = tuple(PROMOTION_METRICS)
PER_SEED_ARTIFACT = "eval_holdout.json"  # a run's per-seed held-out results
PER_SEED_TAG = "eval_holdout_per_seed"  # the same, compact, on a model version
ALPHA = 0.05  # promotion needs p < ALPHA
BOOTSTRAP_SAMPLES = 10_000
DB_NAME = "mlflow.db"
PROBE_TIMEOUT_S = 10  # the first request to a tracking server: one try, this long
VERIFIED_TAG = "shadowrl.verified"  # passed | failed | none: the run's real-shadow verification
VERIFICATION_TAG = "shadowrl.verification"  # its headline, in words
VERIFICATION_ARTIFACT = "verification.json"
VERIFY_PREFIX = "verify_"

try:  # MLflow's own limits, with the documented values as a fallback
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH as _MAX_KEY
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as _MAX_PARAM
except ImportError:  # pragma: no cover - older/newer MLflow
    _MAX_KEY, _MAX_PARAM = 250, 6000
try:
    from mlflow.utils.validation import MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH as _MAX_TAG
except ImportError:  # pragma: no cover
    _MAX_TAG = 5000

_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")
_TRUNCATED = "...[truncated]"


# --------------------------------------------------------------------------- where runs go


def tracking_uri(cli_value: str | None = None) -> str:
    """The tracking URI to use: ``cli_value``, else ``MLFLOW_TRACKING_URI``, else the SQLite
    store ``mlflow.db`` in the working directory as an absolute URI (four slashes)."""
    if cli_value:
        return cli_value
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / DB_NAME}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class TrackingUnavailable(ConnectionError):
    """The tracking server does not answer: the message names the URI and how to change it."""


def _where_to_change() -> str:
    return (f"start it, or point MLFLOW_TRACKING_URI (or train's --tracking-uri) at one "
            f"that runs (default: sqlite:///{Path.cwd().resolve() / DB_NAME})")


@contextmanager
def file_lock(path: Path, timeout_s: float | None = None, what: str = "") -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path``, held for the block.

    Every process that touches the store takes it the same way, so they queue instead of
    racing; the kernel drops it when its holder dies, so a killed process never leaves a
    stale lock. Waits at most ``timeout_s`` (None: as long as it takes), then TimeoutError.
    Without ``fcntl`` (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{what or 'lock'} {path}: still held by another "
                                       f"process after {timeout_s:g} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_READY: set[str] = set()  # stores this process has opened (created, migrated, or reached)


def _lock_path(db: Path, purpose: str) -> Path:
    return db.with_name(f"{db.name}.{purpose}.lock")


def _ready(uri: str) -> None:
    """Open the store once per process, safely.

    A SQLite store is created or migrated by the first connection, and MLflow's migration is
    not safe against a second process doing the same (``duplicate column name: step``), so
    the first connection of each process happens under a file lock beside the database,
    tracking and registry tables both. A server (``http(s)://``) gets one quick request
    (no retries, :data:`PROBE_TIMEOUT_S`): :class:`TrackingUnavailable` when it does not
    answer, instead of minutes of retries.
    """
    if uri in _READY:
        return
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(_lock_path(db, "schema"), what="MLflow store schema lock"):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
    elif uri.startswith(("http://", "https://")):
        _probe(uri)
    _READY.add(uri)


def _probe(uri: str) -> None:
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(PROBE_TIMEOUT_S)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, DNS, HTTP errors alike
        reason = _short_reason(exc)
        raise TrackingUnavailable(f"MLflow tracking server {uri} does not answer ({reason}): "
                                  f"{_where_to_change()}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _short_reason(exc: BaseException) -> str:
    """The telling part of a requests/MLflow connection error, on one line."""
    text = " ".join(str(exc).split())
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   "Temporary failure in name resolution", "No route to host"):
        if marker in text:
            return marker.lower() if marker != "Connection refused" else "connection refused"
    return text[:200]


def configure(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default :func:`tracking_uri`) and open it (:func:`_ready`:
    a SQLite store created or migrated under a file lock, a server checked to answer).

    Returns the URI. (MLflow also exports it as ``MLFLOW_TRACKING_URI`` for subprocesses.)
    Raises :class:`TrackingUnavailable` for a server that does not answer.
    """
    uri = uri or tracking_uri()
    _ready(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _client(client: MlflowClient | None = None, *, must_exist: bool = True) -> MlflowClient:
    """``client``, else one for the configured URI; a SQLite store that does not exist is an
    error (rather than a new empty database created by a read-only lookup), and so is a
    server that does not answer (:class:`TrackingUnavailable`, an OSError)."""
    if client is not None:
        return client
    uri = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else tracking_uri()
    db = _sqlite_path(uri)
    if must_exist and db is not None and not db.is_file():
        raise ValueError(f"no MLflow tracking store at {db} (set MLFLOW_TRACKING_URI; "
                         f"shadowrl train also takes --tracking-uri)")
    _ready(uri)
    return MlflowClient(tracking_uri=uri)


def use_experiment(name: str) -> str:
    """The id of experiment ``name``, created if missing, and made the active one. Two
    processes creating it at once both get it (the loser of the race reads it back)."""
    for attempt in range(3):
        try:
            return str(mlflow.set_experiment(name).experiment_id)
        except MlflowException:
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- run lifecycle

PID_TAG, HOST_TAG, START_TAG = "shadowrl.pid", "shadowrl.host", "shadowrl.process_start"
FAILURE_TAG = "shadowrl.failure"


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc): with the pid it
    tells a live process from a later one that got the same pid. "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """Tags that say which process runs a run: pid, host and the process's start time."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: _process_start(pid)}


def process_alive(pid: int, started: str = "") -> bool:
    """Is process ``pid`` (on this host) still the one that started at ``started``?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    if started:
        now = _process_start(pid)
        return not now or now == started
    return True


def fail_stale_runs(experiment_id: str, client: MlflowClient | None = None) -> list[str]:
    """End as FAILED the runs of the experiment still RUNNING whose process is gone.

    Only runs that :func:`process_tags` marked as started on this host are judged (another
    host's processes cannot be seen from here); each gets a ``shadowrl.failure`` tag saying
    why. Returns their ids.
    """
    client = client or _client(must_exist=False)
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit():
            continue
        if process_alive(int(pid), tags.get(START_TAG, "")):
            continue
        client.set_tag(run.info.run_id, FAILURE_TAG,
                       f"process {pid} on {host} ended without finishing the run (found by "
                       f"process {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')})")
        client.set_terminated(run.info.run_id, "FAILED")
        stale.append(run.info.run_id)
    return stale


def end_run(status: str, reason: str | None = None) -> None:
    """End the active run as ``status`` (FINISHED, FAILED or KILLED), with ``reason`` as its
    ``shadowrl.failure`` tag; a store that cannot be reached any more is left to
    :func:`fail_stale_runs` of the next start (the run stays RUNNING until then)."""
    run = mlflow.active_run()
    if run is None:
        return
    try:
        if reason:
            mlflow.set_tag(FAILURE_TAG, reason[:_MAX_TAG])
    except Exception:  # noqa: BLE001 - the store is gone: the status below may still work
        pass
    try:
        mlflow.end_run(status)  # forgets the run locally before it asks the store
    except Exception:  # noqa: BLE001 - the store is gone; nothing more to do here
        pass


def _uris(client: MlflowClient) -> tuple[str, str]:
    tracking = getattr(client, "tracking_uri", None) or client._tracking_client.tracking_uri
    registry = getattr(client, "_registry_uri", None) or tracking
    return tracking, registry


# --------------------------------------------------------------------------- run inputs


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, Path):
        text = str(value)
    elif hasattr(value, "model_dump"):
        text = json.dumps(value.model_dump(mode="json"), sort_keys=True)
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = str(value)
    if len(text) > _MAX_PARAM:
        text = text[: _MAX_PARAM - len(_TRUNCATED)] + _TRUNCATED
    return text


def _param_key(key: str) -> str:
    key = _BAD_KEY_CHARS.sub("_", key)
    return key if len(key) <= _MAX_KEY else key[: _MAX_KEY - 9] + "~" + hashlib.sha256(
        key.encode()).hexdigest()[:8]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` for ``mlflow.log_params``.

    Mappings nest with dots, lists of mappings by index (``a.0.b``), other lists and scalars
    become JSON text (``[128, 128]``, ``true``, ``null``); strings stay as they are. Values
    longer than MLflow's param limit are truncated (marked ``...[truncated]``); characters
    MLflow rejects in keys become ``_``.
    """
    out: dict[str, str] = {}
    if hasattr(d, "model_dump"):
        d = d.model_dump(mode="json")  # type: ignore[union-attr]
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if hasattr(v, "model_dump"):
            v = v.model_dump(mode="json")
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}"))
        else:
            out[_param_key(key)] = _param_value(v)
    return out


def scenario_hash(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of the scenario file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from; ``"unknown"`` when it
    is not a git checkout, git is missing or slow."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) \
        else "unknown"


# --------------------------------------------------------------------------- metrics


def _now_ms() -> int:
    return int(time.time() * 1000)


def _log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float],
                 step: int) -> None:
    ts = _now_ms()
    _log_batch(client, run_id, [Metric(k, float(v), ts, int(step)) for k, v in values.items()
                                if v is not None and math.isfinite(float(v))])


def _log_batch(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    for i in range(0, len(metrics), 1000):  # MLflow's per-request metric limit
        client.log_batch(run_id, metrics=list(metrics[i:i + 1000]))


def _active_run_id(run_id: str | None) -> str:
    if run_id is not None:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call inside `with mlflow.start_run():` or "
                           "pass run_id")
    return run.info.run_id


class MlflowMetricsCallback(BaseCallback):
    """Log training progress to an MLflow run at each rollout end, at ``step=num_timesteps``.

    From the episodes that finished since the last log (SB3's ``Monitor`` puts
    ``info["episode"] = {"r", "l"}`` and :class:`~shadowrl.rl.env.RollbackEnv` ``downtime_s``,
    ``budget_burn`` and ``outcome`` into the terminal step's ``info``): ``<prefix>reward_mean``,
    ``<prefix>downtime_mean``, ``<prefix>budget_burn_mean``, ``<prefix>length_mean``,
    ``<prefix>recovered_rate`` and ``<prefix>episodes``, in one ``log_batch`` request.
    Rollouts in which no episode ended log nothing. ``run_id`` defaults to the run active
    when training starts.
    """

    def __init__(self, run_id: str | None = None, client: MlflowClient | None = None,
                 prefix: str = "train_") -> None:
        super().__init__(verbose=0)
        self.run_id = run_id
        self.client = client
        self.prefix = prefix
        self.logged_steps: list[int] = []
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self._rewards: list[float] = []
        self._lengths: list[float] = []
        self._downtimes: list[float] = []
        self._burns: list[float] = []
        self._outcomes: list[str] = []

    def _on_training_start(self) -> None:
        self.run_id = _active_run_id(self.run_id)
        if self.client is None:
            self.client = MlflowClient()

    def _on_step(self) -> bool:
        for info in self.locals.get("infos") or ():
            episode = info.get("episode")
            if episode is not None:
                self._rewards.append(float(episode["r"]))
                self._lengths.append(float(episode["l"]))
            if "downtime_s" in info:
                self._downtimes.append(float(info["downtime_s"]))
                self._outcomes.append(str(info.get("outcome", "")))
                if "budget_burn" in info:
                    self._burns.append(float(info["budget_burn"]))
        return True

    def _on_rollout_end(self) -> None:
        self.flush()

    def _on_training_end(self) -> None:
        self.flush()

    def flush(self) -> dict[str, float]:
        """Log what was collected since the last log (nothing if no episode ended)."""
        if not self._rewards and not self._downtimes:
            return {}
        p = self.prefix
        values: dict[str, float] = {f"{p}episodes": float(max(len(self._rewards),
                                                              len(self._downtimes)))}
        if self._rewards:
            values[f"{p}reward_mean"] = float(np.mean(self._rewards))
            values[f"{p}length_mean"] = float(np.mean(self._lengths))
        if self._downtimes:
            values[f"{p}downtime_mean"] = float(np.mean(self._downtimes))
            values[f"{p}recovered_rate"] = float(np.mean(
                [o == "recovered" for o in self._outcomes]))
        if self._burns:
            values[f"{p}budget_burn_mean"] = float(np.mean(self._burns))
        assert self.client is not None and self.run_id is not None
        _log_metrics(self.client, self.run_id, values, self.num_timesteps)
        self.logged_steps.append(int(self.num_timesteps))
        self._reset_buffers()
        return values


EVAL_CONSTANTS = ("episodes",)  # the same in every eval row: a param, not a metric


def log_eval_history(history: Sequence[Mapping[str, Any]], run_id: str | None = None,
                     client: MlflowClient | None = None) -> int:
    """Log :class:`CostEvalCallback` rows (``TrainResult.eval_history``) as ``eval_<key>``
    metrics at ``step=row["timesteps"]``, one ``log_batch``; returns the number of metrics.
    What every row has the same (the episodes per evaluation) becomes the param
    ``eval_<key>`` instead, logged once."""
    run_id = _active_run_id(run_id)
    client = client or MlflowClient()
    ts = _now_ms()
    metrics = []
    constants = {f"eval_{k}": history[0][k] for k in EVAL_CONSTANTS if history
                 and k in history[0]}
    log_params_once(constants, run_id, client)
    for row in history:
        step = int(row.get("timesteps", 0))
        for key, value in row.items():
            if key == "timesteps" or key in EVAL_CONSTANTS or isinstance(value, bool) or \
                    not isinstance(value, (int, float, np.integer, np.floating)):
                continue
            if not math.isfinite(float(value)):
                continue
            name = key if key.startswith("eval_") else f"eval_{key}"
            metrics.append(Metric(name, float(value), ts, step))
    _log_batch(client, run_id, metrics)
    return len(metrics)


def _quantiles(prefix: str, values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {f"{prefix}_mean": float(arr.mean()), f"{prefix}_p50": float(np.percentile(arr, 50)),
            f"{prefix}_p95": float(np.percentile(arr, 95)), f"{prefix}_max": float(arr.max())}


def log_params_once(params: Mapping[str, Any], run_id: str | None = None,
                    client: MlflowClient | None = None) -> None:
    """Log the params the run does not have yet (MLflow refuses to change a param; logging
    the same value again is a wasted request)."""
    run_id = _active_run_id(run_id)
    client = client or MlflowClient()
    have = client.get_run(run_id).data.params
    new = {_param_key(k): _param_value(v) for k, v in params.items()}
    new = {k: v for k, v in new.items() if k not in have}
    if new:
        client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])


def holdout_params(seed: int, episodes: int) -> dict[str, int]:
    """Which held-out incidents a run was measured on (params: constants of the run)."""
    return {f"{HOLDOUT_PREFIX}seed": int(seed), f"{HOLDOUT_PREFIX}episodes": int(episodes)}


def holdout_metrics(episodes: Sequence[Episode], seed: int) -> dict[str, float]:
    """The held-out evaluation numbers (``eval_holdout_*``): downtime mean/p95, cost and
    failed requests means, bad requests and budget burn mean/p50/p95/max and recovered rate.
    The seeds they used are :func:`holdout_params`."""
    if not episodes:
        raise ValueError("no episodes to summarise")
    downtime = np.array([e.rehearsal.downtime_s for e in episodes], dtype=float)
    failed = np.array([e.rehearsal.failed_requests for e in episodes], dtype=float)
    p = HOLDOUT_PREFIX
    return {f"{p}downtime_mean": float(downtime.mean()),
            f"{p}downtime_p95": float(np.percentile(downtime, 95)),
            f"{p}cost_mean": float(np.mean([e.cost for e in episodes])),
            f"{p}failed_requests_mean": float(failed.mean()),
            **_quantiles(f"{p}bad_requests", [e.rehearsal.bad_requests for e in episodes]),
            **_quantiles(f"{p}budget_burn", [e.rehearsal.budget_burn for e in episodes]),
            f"{p}recovered_rate": float(np.mean([e.rehearsal.outcome == "recovered"
                                                 for e in episodes]))}


def per_seed_record(episodes: Sequence[Episode], seed: int) -> dict[str, Any]:
    """Per-incident outcomes, budget burns and downtimes on seeds ``seed + i``: what
    :func:`promote_if_better` compares pairwise (the ``eval_holdout.json`` artifact)."""
    from shadowrl.rl.optimizer import per_seed_record as record

    return record([e.rehearsal for e in episodes], seed, [e.cost for e in episodes])


def log_per_seed(record: Mapping[str, Any], run_id: str | None = None,
                 client: MlflowClient | None = None) -> None:
    """Log a per-seed record as the run's ``eval_holdout.json`` artifact."""
    (client or MlflowClient()).log_dict(_active_run_id(run_id), dict(record), PER_SEED_ARTIFACT)


def log_holdout(episodes: Sequence[Episode], seed: int, run_id: str | None = None,
                client: MlflowClient | None = None) -> dict[str, float]:
    """Log :func:`holdout_metrics`, :func:`holdout_params` and the per-seed record
    (``eval_holdout.json``) to the run: what :func:`promote_if_better` reads."""
    client = client or MlflowClient()
    run_id = _active_run_id(run_id)
    values = holdout_metrics(episodes, seed)
    log_params_once(holdout_params(seed, len(episodes)), run_id, client)
    _log_metrics(client, run_id, values, 0)
    log_per_seed(per_seed_record(episodes, seed), run_id, client)
    return values


def evaluate_holdout_evidence(policy: Any, scenario: str | Path | Scenario, seed: int,
                              episodes: int, *, env: RollbackEnv | None = None,
                              env_kwargs: Mapping[str, Any] | None = None
                              ) -> tuple[dict[str, float], dict[str, Any]]:
    """Run ``policy`` on seeds ``seed .. seed+episodes-1``: :func:`holdout_metrics` and the
    :func:`per_seed_record`."""
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate

    env = env or RollbackEnv(as_scenario(scenario), **dict(env_kwargs or {}))
    eps = evaluate(env, policy, int(episodes), int(seed))
    return holdout_metrics(eps, seed), per_seed_record(eps, seed)


def evaluate_holdout(policy: Any, scenario: str | Path | Scenario, seed: int, episodes: int,
                     *, env: RollbackEnv | None = None,
                     env_kwargs: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Run ``policy`` on seeds ``seed .. seed+episodes-1`` and return :func:`holdout_metrics`."""
    return evaluate_holdout_evidence(policy, scenario, seed, episodes, env=env,
                                     env_kwargs=env_kwargs)[0]


def verification_metrics(v: Verification) -> dict[str, float]:
    """A verification's numbers as ``verify_*`` metrics: passed (1/0), runs, the winner's
    and the configured procedure's recovered rate and mean downtime, bad requests and budget
    burn on the real backend, the paired difference of the objective's measure and its
    standard error, and the sim-vs-real gap of the winner."""
    p = VERIFY_PREFIX
    out = {f"{p}passed": float(v.passed), f"{p}runs": float(v.runs),
           f"{p}difference_mean": v.difference.mean,
           f"{p}difference_se": v.difference.standard_error,
           f"{p}predicted_difference_mean": v.predicted.mean}
    for who in ("winner", "configured"):
        m = v.means[who]
        out.update({f"{p}{who}_recovered_rate": m.recovered / m.runs,
                    f"{p}{who}_downtime_mean": m.downtime_s,
                    f"{p}{who}_bad_requests_mean": m.bad_requests,
                    f"{p}{who}_budget_burn_mean": m.budget_burn})
    out.update({f"{p}gap_{k}": float(value) for k, value in v.gap.model_dump().items()})
    return out


def log_verification(v: Verification | None, run_id: str | None = None,
                     client: MlflowClient | None = None) -> str:
    """Record the run's verification on a real backend: the tag ``shadowrl.verified``
    (``passed``, ``failed``, or ``none`` when there was none), its headline in
    ``shadowrl.verification``, the ``verify_*`` metrics and ``verification.json``. Promotion
    reads the tag (:func:`promote_if_better` with ``require_verification``). Returns the
    status."""
    client = client or MlflowClient()
    run_id = _active_run_id(run_id)
    if v is None:
        client.set_tag(run_id, VERIFIED_TAG, "none")
        client.set_tag(run_id, VERIFICATION_TAG, "none: not verified on a real shadow (the "
                                                 "experiment names no real backend to verify "
                                                 "on: verify: {backend: docker})")
        return "none"
    client.set_tag(run_id, VERIFIED_TAG, v.status)
    client.set_tag(run_id, VERIFICATION_TAG, summary_line(v)[:_MAX_TAG])
    client.set_tag(run_id, "shadowrl.verify_backend", v.backend)
    _log_metrics(client, run_id, verification_metrics(v), 0)
    client.log_dict(run_id, v.model_dump(mode="json"), VERIFICATION_ARTIFACT)
    return v.status


def _verification_gate(client: MlflowClient, mv: Any) -> tuple[str, str | None]:
    """The version's run's verification status and, unless it passed, why it may not be
    promoted."""
    status = "none"
    if mv.run_id:
        try:
            status = client.get_run(mv.run_id).data.tags.get(VERIFIED_TAG) or "none"
        except MlflowException:
            status = "none"
    if status == "passed":
        return status, None
    what = ("failed its verification on the real shadow" if status == "failed"
            else "was not verified on a real shadow")
    return status, (f"version {mv.version}'s run {what} ({VERIFIED_TAG} = {status}), and "
                    f"the experiment names a real backend: promotion requires a passed "
                    f"verification")


# --------------------------------------------------------------------------- run files


def _referenced_files(scenario_path: Path) -> list[str]:
    """Relative paths the scenario reads (a CSV traffic pattern, the deviation history)."""
    sc = as_scenario(scenario_path)
    refs = []
    pattern = sc.deployment.traffic.pattern
    if isinstance(pattern, CsvPattern):
        refs.append(pattern.csv)
    if sc.deviations.history is not None:
        refs.append(sc.deviations.history.file)
    base = scenario_path.resolve().parent
    out = []
    for ref in refs:
        p = Path(ref)
        if p.is_absolute() or ".." in p.parts or not (base / p).is_file():
            continue  # absolute or outside: loads from where it is (if it is there)
        out.append(ref)
    return out


def _stage_scenario(scenario_path: Path, folder: Path) -> Path:
    """Copy the scenario file and the files it references by relative path into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(scenario_path, folder / scenario_path.name)
    base = scenario_path.resolve().parent
    for ref in _referenced_files(scenario_path):
        (folder / ref).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / ref, folder / ref)
    return folder


def _run_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    try:
        return [f.path for f in client.list_artifacts(run_id, path)]
    except (MlflowException, OSError):
        return []


def log_run_files(scenario_path: str | Path | None = None,
                  procedure_path: str | Path | None = None,
                  summary: Mapping[str, Any] | None = None, *, run_id: str | None = None,
                  client: MlflowClient | None = None, overwrite: bool = True) -> None:
    """Log the run's inputs/outputs in the layout :func:`load_export_source` reads:
    ``scenario/<file>`` (+ referenced files), ``procedure.yaml`` and ``summary.json``; also
    tags the run with the scenario hash and the git commit."""
    run_id = _active_run_id(run_id)
    client = client or MlflowClient()
    present = set() if overwrite else set(_run_artifacts(client, run_id))
    with tempfile.TemporaryDirectory(prefix="shadowrl-run-") as tmp:
        if scenario_path is not None and "scenario" not in present:
            sp = Path(scenario_path)
            client.log_artifacts(run_id, str(_stage_scenario(sp, Path(tmp) / "scenario")),
                                 "scenario")
            client.set_tag(run_id, "shadowrl.scenario_hash", scenario_hash(sp))
            client.set_tag(run_id, "shadowrl.git_commit", git_commit())
        if procedure_path is not None and "procedure.yaml" not in present:
            target = Path(tmp) / "procedure.yaml"
            shutil.copy2(procedure_path, target)
            client.log_artifact(run_id, str(target))
        if summary is not None and "summary.json" not in present:
            target = Path(tmp) / "summary.json"
            target.write_text(json.dumps(summary, indent=2, default=str))
            client.log_artifact(run_id, str(target))


# --------------------------------------------------------------------------- pyfunc model


def _find(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern)) if folder.is_dir() else []
    return found[0] if found else None


def _policy_file(path: Path) -> Path:
    """The policy zip of a ``policy`` artifact (a zip, or a folder with the zip and sidecar)."""
    if path.is_file():
        return path
    preferred = path / "policy.zip"
    if preferred.is_file():
        return preferred
    found = _find(path, "*.zip")
    if found is None:
        raise FileNotFoundError(f"no policy .zip in {path}")
    return found


def _scenario_file(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")):
        return candidate
    raise FileNotFoundError(f"no scenario YAML in {path}")


def _procedure_file(path: Path) -> Path:
    if path.is_file():
        return path
    found = _find(path, "procedure.yaml") or _find(path, "*.yaml")
    if found is None:
        raise FileNotFoundError(f"no procedure YAML in {path}")
    return found


def _env_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The RollbackEnv keyword arguments the policy was trained with (its sidecar's ``env``)."""
    from shadowrl.rl.agents import env_args

    env = meta.get("env") or {}
    accepted = env_args()
    return {k: v for k, v in env.items() if k in accepted} if isinstance(env, dict) else {}


def _env_for_policy(scenario: Scenario, policy: SB3Policy, meta: Mapping[str, Any],
                    procedure: Procedure | None = None) -> RollbackEnv:
    """A RollbackEnv the policy fits: the scenario's procedure, else ``procedure``."""
    from shadowrl.rl.env import RollbackEnv

    kwargs = _env_kwargs(meta)
    env = RollbackEnv(scenario, **kwargs)
    try:
        policy.check_fit(env)
        return env
    except ValueError as first:
        if procedure is None:
            raise
        alt = RollbackEnv(scenario, procedure=procedure, **kwargs)
        try:
            policy.check_fit(alt)
        except ValueError:
            raise first from None
        return alt


class RollbackPolicyModel(mlflow.pyfunc.PythonModel):
    """A trained rollback policy as an MLflow pyfunc model: observed incident -> rollback plan.

    The plan is *rehearsal-backed*. The model keeps a library of simulated breaches of its
    scenario (seeds ``0 .. library_size-1``: the incident signature at the breach, i.e. each
    component's error rate and p99 latency relative to healthy, and the SLO rules failing). For
    each observed incident it finds the simulated breach nearest to the observation
    (Euclidean distance on the signature; agreement of the failing rules breaks ties), rolls
    the policy out in the shadow from that breach, and returns the steps the policy chose.
    The policy adapts its order and settings to the incident it recognises, and
    ``expected_downtime_s`` is the downtime that rehearsal measured, not a guess. When the
    matched rehearsal fails at a step (``outcome`` ``rollback_failed``) the plan ends there.

    Input: a pandas DataFrame, one row per observed incident, with ``failing_rules`` (rule names
    separated by commas, or a list of names) and, per component,
    ``<component>.error_rate`` and ``<component>.latency_p99_ms``. A missing column or an empty
    value means that metric is at its healthy level.

    Output: one row per input row with ``matched_seed``, ``matched_incident``, ``plan`` (JSON:
    ``[{"step", "action", "target", "settings"}, ...]`` in execution order, skipped optional
    steps left out), ``expected_downtime_s``, ``outcome`` (of the matched rehearsal) and
    ``match_distance``.

    Artifacts: ``policy`` (the SB3 zip with its ``.json`` sidecar), ``scenario`` (the scenario
    YAML) and optionally ``procedure`` (used when the policy was trained on that procedure
    rather than the scenario's own).
    """

    def __init__(self, library_size: int = 64) -> None:
        if library_size < 1:
            raise ValueError("library_size must be at least 1")
        self.library_size = int(library_size)
        self._ready = False

    # The instance is pickled when logged: keep the configuration, not the loaded state.
    def __getstate__(self) -> dict[str, Any]:
        return {"library_size": self.library_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.library_size = int(state.get("library_size", 64))
        self._ready = False

    # ------------------------------------------------------------------ loading

    def load_context(self, context: Any) -> None:
        config = getattr(context, "model_config", None) or {}
        if "library_size" in config:
            self.library_size = int(config["library_size"])
        artifacts = context.artifacts
        self.setup(artifacts["scenario"], artifacts["policy"], artifacts.get("procedure"))

    def setup(self, scenario: str | Path, policy: str | Path,
              procedure: str | Path | None = None) -> RollbackPolicyModel:
        """Load the scenario and policy and build the breach library (``load_context``
        without MLflow)."""
        from shadowrl.core.errors import NoBreachError
        from shadowrl.rl.agents import load_policy, read_sidecar

        scenario_file = _scenario_file(Path(scenario))
        policy_file = _policy_file(Path(policy))
        self.scenario = as_scenario(scenario_file)
        self.meta = read_sidecar(policy_file)
        self.policy = load_policy(policy_file, name=str(self.meta.get("procedure") or "rl"))
        proc = None
        if procedure:
            proc = load_procedure(_procedure_file(Path(procedure)), self.scenario)
        self.env = _env_for_policy(self.scenario, self.policy, self.meta, proc)
        healthy = self.env.healthy_metrics()
        self.components = list(healthy.components)
        self.healthy = {name: (c.error_rate, c.latency_p99_ms)
                        for name, c in healthy.components.items()}
        self.rules = [r.name for r in self.scenario.slo.rules]
        seeds, incidents, sigs, failing = [], [], [], []
        problem: NoBreachError | None = None
        for seed in range(self.library_size):
            try:
                self.env.reset(seed=seed)
            except NoBreachError as exc:  # this seed never breaches: nothing to rehearse
                problem = exc
                continue
            m = self.env.shadow.sample()
            seeds.append(seed)
            incidents.append(self.env.injection.incident if self.env.injection else "")
            sigs.append(self._vector({n: (c.error_rate, c.latency_p99_ms)
                                      for n, c in m.components.items()}))
            failing.append(frozenset(m.failing_rules))
        if not seeds:
            raise ValueError(f"no simulated breach in seeds 0..{self.library_size - 1} of "
                             f"scenario '{self.scenario.name}': {problem}")
        self.library_seeds = seeds
        self.library_incidents = incidents
        self.library = np.vstack(sigs)
        self.library_failing = failing
        self._lock = threading.Lock()
        self._ready = True
        return self

    # ------------------------------------------------------------------ signature

    def _vector(self, observed: Mapping[str, tuple[float | None, float | None]]) -> np.ndarray:
        """Error rate and p99 ratio to healthy per component, clamped like the observation."""
        from shadowrl.rl.env import OBS_CAP, healthy_ratio

        out = []
        for name in self.components:
            h_err, h_p99 = self.healthy[name]
            err, p99 = observed.get(name, (None, None))
            err = h_err if _missing(err) else _number(err, f"{name}.error_rate")
            ratio = 1.0 if _missing(p99) else healthy_ratio(
                _number(p99, f"{name}.latency_p99_ms"), h_p99)
            out += [err, ratio]
        return np.clip(np.nan_to_num(np.asarray(out, dtype=np.float64), nan=0.0,
                                     posinf=OBS_CAP), 0.0, OBS_CAP)

    def observation(self, row: Mapping[str, Any]) -> tuple[np.ndarray, frozenset[str]]:
        """One input row -> (signature vector, failing rule names)."""
        observed = {name: (row.get(f"{name}.error_rate"), row.get(f"{name}.latency_p99_ms"))
                    for name in self.components}
        return self._vector(observed), frozenset(_rule_names(row.get("failing_rules")))

    def match(self, vector: np.ndarray, failing: frozenset[str]) -> tuple[int, float]:
        """Index of the nearest simulated breach and its distance."""
        dist = np.sqrt(((self.library - vector) ** 2).sum(axis=1))
        best = float(dist.min())
        tied = np.flatnonzero(dist <= best + 1e-9 * (1.0 + best))
        if len(tied) > 1:
            def agreement(i: int) -> float:
                lib = self.library_failing[i]
                union = lib | failing
                return 1.0 if not union else len(lib & failing) / len(union)
            tied = sorted(tied, key=lambda i: (-agreement(int(i)), int(i)))
        return int(tied[0]), float(dist[int(tied[0])])

    # ------------------------------------------------------------------ predict

    def rollout(self, seed: int) -> tuple[list[dict[str, Any]], float, str]:
        """Run the policy in the shadow from breach ``seed``: (plan, downtime, outcome)."""
        from shadowrl.rl.evaluate import run_episode

        env = self.env
        with self._lock:
            episode = run_episode(env, self.policy, seed)
            plan = []
            for a in episode.actions:
                i, settings = env.actions[a]
                if settings is None:
                    continue  # a skipped optional step
                step = env.steps[i]
                plan.append({"step": step.name, "action": step.action, "target": step.target,
                             "settings": {k: _plain(v) for k, v in settings.items()}})
            return plan, float(episode.rehearsal.downtime_s), episode.rehearsal.outcome

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not self._ready:
            raise RuntimeError("RollbackPolicyModel is not loaded (load it with "
                               "mlflow.pyfunc.load_model, or call setup())")
        rows = _records(model_input)
        out = []
        for row in rows:
            vector, failing = self.observation(row)
            k, distance = self.match(vector, failing)
            seed = self.library_seeds[k]
            plan, downtime, outcome = self.rollout(seed)
            out.append({"matched_seed": int(seed), "matched_incident": self.library_incidents[k],
                        "plan": json.dumps(plan), "expected_downtime_s": downtime,
                        "outcome": outcome, "match_distance": distance})
        return pd.DataFrame(out, columns=["matched_seed", "matched_incident", "plan",
                                          "expected_downtime_s", "outcome", "match_distance"])

    # ------------------------------------------------------------------ examples

    def example_input(self, seed: int = 0) -> pd.DataFrame:
        """A one-row input built from simulated breach ``seed`` (what an operator would see)."""
        self.env.reset(seed=seed)
        return breach_frame(self.env)

    def input_schema(self) -> Any:
        """Every column optional (a missing metric means healthy). Metric columns are typed
        ``any``: MLflow's ``double`` refuses int64 columns, and ``500`` ms sent as JSON is one;
        :meth:`predict` converts them and names a column whose value is not a number."""
        from mlflow.types.schema import AnyType, ColSpec, Schema

        cols = [ColSpec("string", "failing_rules", required=False)]
        for name in self.components:
            cols += [ColSpec(AnyType(), f"{name}.error_rate", required=False),
                     ColSpec(AnyType(), f"{name}.latency_p99_ms", required=False)]
        return Schema(cols)


def breach_frame(env: RollbackEnv) -> pd.DataFrame:
    """The env's current metrics as a one-row :class:`RollbackPolicyModel` input."""
    m = env.shadow.sample()
    row: dict[str, Any] = {"failing_rules": ",".join(m.failing_rules)}
    for name, c in m.components.items():
        row[f"{name}.error_rate"] = float(c.error_rate)
        row[f"{name}.latency_p99_ms"] = float(c.latency_p99_ms)
    return pd.DataFrame([row])


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column {column}: expected a number, got {value!r}") from None


def _rule_names(value: Any) -> list[str]:
    if value is None or (not isinstance(value, (list, tuple, set, np.ndarray))
                         and _missing(value)):
        return []
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, (list, tuple, set, np.ndarray)):
        items = value
    else:
        items = [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _records(model_input: Any) -> list[dict[str, Any]]:
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, Mapping):
        return [dict(model_input)]
    if isinstance(model_input, (list, tuple)) and all(isinstance(r, Mapping) for r in model_input):
        return [dict(r) for r in model_input]
    raise TypeError(f"expected a pandas DataFrame (one row per incident), got "
                    f"{type(model_input).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("mlflow", "shadowrl", "stable-baselines3", "sb3-contrib", "torch", "gymnasium",
                 "numpy", "pandas", "pydantic", "pyyaml", "cloudpickle"):
        try:
            reqs.append(f"{dist}=={_metadata.version(dist)}")
        except _metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


_MODEL_CODE = """\
# shadowrl rollback policy, logged as MLflow "models from code": see shadowrl.integrations.mlflow.
import mlflow

from shadowrl.integrations.mlflow import RollbackPolicyModel

mlflow.models.set_model(RollbackPolicyModel())
"""


def log_policy_model(policy_zip: str | Path, scenario_path: str | Path, *,
                     procedure_path: str | Path | None = None,
                     runbook_path: str | Path | None = None,
                     registered_model_name: str | None = None, name: str = "policy",
                     library_size: int = 64, await_registration_for: int = 300) -> ModelInfo:
    """Log the policy as a :class:`RollbackPolicyModel` into the active run (and register it
    as a new version of ``registered_model_name``).

    The model is loaded locally first (an unusable policy/scenario pair fails here, not at
    serving time) to build its signature and input example from simulated breach 0. The
    scenario (and the procedure, if given) are also logged as run files (``scenario/``,
    ``procedure.yaml``) unless the run already has them. ``pip_requirements`` are pinned to
    the installed versions, shadowrl included: serving the model needs shadowrl installed.
    """
    run_id = _active_run_id(None)
    policy_file = Path(policy_zip)
    scenario_file = Path(scenario_path)
    if not policy_file.is_file():
        raise FileNotFoundError(f"no such policy file: {policy_file}")
    if not scenario_file.is_file():
        raise FileNotFoundError(f"no such scenario file: {scenario_file}")
    from shadowrl.rl.agents import read_sidecar, sidecar_path

    local = RollbackPolicyModel(library_size=library_size).setup(
        scenario_file, policy_file, procedure_path)
    example = local.example_input(0)
    output = local.predict(None, example)
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature

    with warnings.catch_warnings():  # "integer column" hint: matched_seed is never missing
        warnings.simplefilter("ignore")
        inferred = infer_signature(example, output)
    signature = ModelSignature(inputs=local.input_schema(), outputs=inferred.outputs)

    with tempfile.TemporaryDirectory(prefix="shadowrl-model-") as tmp:
        stage = Path(tmp)
        policy_dir = stage / "policy"
        policy_dir.mkdir()
        shutil.copy2(policy_file, policy_dir / policy_file.name)
        sidecar = sidecar_path(policy_file)
        if sidecar.is_file():
            shutil.copy2(sidecar, policy_dir / sidecar.name)
        artifacts = {"policy": str(policy_dir),
                     "scenario": str(_stage_scenario(scenario_file, stage / "scenario"))}
        if procedure_path is not None:
            shutil.copy2(procedure_path, stage / "procedure.yaml")
            artifacts["procedure"] = str(stage / "procedure.yaml")
        if runbook_path is not None:  # the policy distilled: what the champion exports
            shutil.copy2(runbook_path, stage / "runbook.yaml")
            artifacts["runbook"] = str(stage / "runbook.yaml")
        code = stage / "rollback_policy_model.py"  # models from code: nothing pickled
        code.write_text(_MODEL_CODE)
        meta = read_sidecar(policy_file)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(code), model_config={"library_size": library_size},
            artifacts=artifacts, signature=signature, input_example=example,
            registered_model_name=registered_model_name, pip_requirements=_pip_requirements(),
            await_registration_for=await_registration_for,
            metadata={"shadowrl": {
                "scenario": local.scenario.name, "scenario_hash": scenario_hash(scenario_file),
                "procedure": local.env.procedure.name, "algorithm": meta.get("algorithm"),
                "timesteps": meta.get("timesteps"), "library_size": library_size,
                "git_commit": git_commit()}})
    log_run_files(scenario_file, procedure_path, run_id=run_id, overwrite=False)
    return info


# --------------------------------------------------------------------------- registry


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None,
    VERSION). Anything else is a ValueError."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri}: not a registered model URI (models:/NAME@ALIAS or "
                         f"models:/NAME/VERSION)")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _resolve_version(client: MlflowClient, uri: str) -> Any:
    """The ModelVersion a models:/ URI names; ValueError naming the URI when it does not
    exist."""
    name, alias, version = parse_model_uri(uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            raise ValueError(f"{uri}: no registered model '{name}'") from None
        raise
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _not_found(exc):
            what = f"alias '{alias}'" if alias is not None else f"version {version}"
            raise ValueError(f"{uri}: registered model '{name}' has no {what}") from None
        raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def _download_model(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    tracking, registry = _uris(client)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking,
        registry_uri=registry)
    return Path(path)


def _model_artifact(model_dir: Path, key: str) -> Path | None:
    """A pyfunc artifact (``artifacts/<key>...``) of a downloaded model, or None."""
    base = model_dir / "artifacts"
    for candidate in (base / key, base / f"{key}.yaml", base / f"{key}.zip"):
        if candidate.exists():
            return candidate
    found = sorted(base.glob(f"{key}*")) if base.is_dir() else []
    return found[0] if found else None


def _load_model_policy(model_dir: Path, name: str) -> tuple[SB3Policy, dict[str, Any]]:
    from shadowrl.rl.agents import load_policy, read_sidecar

    art = _model_artifact(model_dir, "policy")
    if art is None:
        raise LookupError(f"{name}: the model has no 'policy' artifact (not logged by "
                          f"shadowrl.integrations.mlflow.log_policy_model?)")
    zip_path = _policy_file(art)
    return load_policy(zip_path, name=name), read_sidecar(zip_path)


def load_registered_policy(uri: str, client: MlflowClient | None = None) -> SB3Policy:
    """The policy of a registered model version (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``), ready for :func:`shadowrl.rl.evaluate.evaluate`."""
    client = _client(client)
    mv = _resolve_version(client, uri)
    with tempfile.TemporaryDirectory(prefix="shadowrl-policy-") as tmp:
        model_dir = _download_model(client, mv.name, str(mv.version), Path(tmp))
        policy, _ = _load_model_policy(model_dir, uri)  # fully in memory: tmp can go
    return policy


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _record_matches(record: Any, seed: int, episodes: int) -> bool:
    """A per-seed record for exactly seeds ``seed .. seed+episodes-1``, with an outcome, a
    budget burn and a downtime per seed."""
    if not isinstance(record, Mapping):
        return False
    try:
        same = int(record["seed"]) == int(seed) and int(record["episodes"]) == int(episodes)
        return same and all(len(record[k]) == int(episodes)
                            for k in ("outcomes", "budget_burn", "downtime_s"))
    except (KeyError, TypeError, ValueError):
        return False


def _compact(record: Mapping[str, Any]) -> str:
    """A per-seed record as a version tag: outcomes as one letter each (R recovered, F failed,
    I ineffective), numbers to 6 significant digits."""
    letters = {"recovered": "R", "rollback_failed": "F", "rollback_ineffective": "I"}
    data = {"seed": int(record["seed"]), "episodes": int(record["episodes"]),
            "outcomes": "".join(letters.get(o, "?") for o in record["outcomes"]),
            "budget_burn": [float(f"{float(v):.6g}") for v in record["budget_burn"]]}
    data["downtime_s"] = [float(f"{float(v):.6g}") for v in record["downtime_s"]]
    return json.dumps(data, separators=(",", ":"))


def _expand(text: str) -> dict[str, Any] | None:
    """Inverse of :func:`_compact` (None for anything else)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("outcomes"), str):
        return None
    names = {"R": "recovered", "F": "rollback_failed", "I": "rollback_ineffective"}
    data["outcomes"] = [names.get(c, "unknown") for c in data["outcomes"]]
    return data


def _run_record(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The run's ``eval_holdout.json``, if it has one."""
    with tempfile.TemporaryDirectory(prefix="shadowrl-holdout-") as tmp:
        try:
            path = client.download_artifacts(run_id, PER_SEED_ARTIFACT, tmp)
            data = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None
    return data if isinstance(data, dict) else None


def _evaluate_version(client: MlflowClient, mv: Any, scenario: Scenario, seed: int,
                      episodes: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Download the version's policy and evaluate it on the seeds."""
    with tempfile.TemporaryDirectory(prefix="shadowrl-eval-") as tmp:
        model_dir = _download_model(client, mv.name, str(mv.version), Path(tmp))
        uri = f"models:/{mv.name}/{mv.version}"
        policy, meta = _load_model_policy(model_dir, uri)
        proc = None
        proc_art = _model_artifact(model_dir, "procedure")
        if proc_art is not None:
            proc = load_procedure(_procedure_file(proc_art), scenario)
        env = _env_for_policy(scenario, policy, meta, proc)
        return evaluate_holdout_evidence(policy, scenario, seed, episodes, env=env)


def _version_evidence(client: MlflowClient, mv: Any, scenario: Scenario, seed: int,
                      episodes: int) -> tuple[dict[str, Any], str]:
    """A version's per-seed results on these seeds: its version tag, else its run's
    ``eval_holdout.json``, else a fresh evaluation of its policy. The version is tagged with
    the record (when it fits in a tag) and the held-out means."""
    record = _expand((mv.tags or {}).get(PER_SEED_TAG, ""))
    if _record_matches(record, seed, episodes):
        return record, "version tags"  # type: ignore[return-value]
    values: dict[str, float] = {}
    source = ""
    if mv.run_id:
        record = _run_record(client, mv.run_id)
        if _record_matches(record, seed, episodes):
            source = f"run {mv.run_id}"
    if not source:
        values, record = _evaluate_version(client, mv, scenario, seed, episodes)
        source = "evaluated"
    assert record is not None
    for k, v in values.items():
        client.set_model_version_tag(mv.name, str(mv.version), k, _tag_number(v))
    compact = _compact(record)
    if len(compact) <= _MAX_TAG:  # else it is re-read from the run or re-evaluated next time
        client.set_model_version_tag(mv.name, str(mv.version), PER_SEED_TAG, compact)
    return record, source


def _tag_number(value: float) -> str:
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


def paired_test(new: Sequence[float], old: Sequence[float], test: str = "auto",
                seed: int = 0) -> tuple[float, str]:
    """One-sided paired test that ``new`` is lower than ``old`` (same seeds): ``(p, name)``.

    ``auto``: the Wilcoxon signed-rank test (scipy) when scipy is installed, else a paired
    bootstrap of the mean difference (``BOOTSTRAP_SAMPLES`` resamples, fixed ``seed``; p is
    the share of resampled means >= 0). Identical values give p = 1.
    """
    a, b = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("a paired test needs two equally long sequences")
    if test not in ("auto", "wilcoxon", "bootstrap"):
        raise ValueError(f"unknown test {test!r} (auto, wilcoxon or bootstrap)")
    diff = a - b
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-300)
    nonzero = diff[np.abs(diff) > 1e-12 * scale]
    if test in ("auto", "wilcoxon"):
        try:
            from scipy.stats import wilcoxon
        except ImportError:
            if test == "wilcoxon":
                raise
        else:
            name = "wilcoxon signed-rank, one-sided"
            if nonzero.size == 0:
                return 1.0, name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(wilcoxon(nonzero, alternative="less").pvalue)
            return (p if math.isfinite(p) else 1.0), name
    name = f"paired bootstrap of the mean difference, one-sided, {BOOTSTRAP_SAMPLES} resamples"
    if nonzero.size == 0:
        return 1.0, name
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(BOOTSTRAP_SAMPLES, diff.size))
    means = diff[idx].mean(axis=1)
    return float((np.sum(means >= 0) + 1) / (BOOTSTRAP_SAMPLES + 1)), name


def _configured_record(scenario: Scenario, seed: int, episodes: int) -> dict[str, Any]:
    """The configured procedure's per-seed results on the seeds."""
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import evaluate
    from shadowrl.rl.policy import configured_policy

    env = RollbackEnv(scenario)
    return per_seed_record(evaluate(env, configured_policy(env), int(episodes), int(seed)),
                           seed)


def _recovered(record: Mapping[str, Any]) -> int:
    return sum(o == "recovered" for o in record["outcomes"])


PROMOTION_TIMEOUT_S = 1800.0  # how long a promotion waits for another one to finish
LEASE_TAG = "shadowrl.promotion_lease"  # registered model tag: who decides now, until when
LEASE_S = 900.0  # a lease outlives a crashed holder by at most this long
LEASE_SETTLE_S = 1.0  # wait after writing a lease before reading it back (Fischer's delay)


@contextmanager
def promotion_lock(model_name: str, client: MlflowClient,
                   timeout_s: float = PROMOTION_TIMEOUT_S) -> Iterator[str]:
    """Serialise champion decisions: one at a time reads the champion, compares and moves it.

    A SQLite registry gets a file lock beside its database (``<db>.promotion.lock``), exact
    and released by the kernel if its holder dies. Any other registry (a tracking server,
    a SQL database) has no lock MLflow exposes, so the decision takes a lease on the model:
    the tag ``shadowrl.promotion_lease`` = ``<token> until <epoch s>``, written only when
    no unexpired lease is there and held only if it still reads back after
    :data:`LEASE_SETTLE_S` (Fischer's mutual exclusion: safe while writing a tag takes less
    than that delay); a crashed holder's lease expires after :data:`LEASE_S`. Yields how the
    decision was serialised.
    """
    db = _sqlite_path(_uris(client)[1])
    if db is not None:
        path = _lock_path(db, "promotion")
        with file_lock(path, timeout_s, "MLflow promotion lock"):
            yield f"file lock {path}"
        return
    with _registry_lease(client, model_name, timeout_s):
        yield f"registry lease {LEASE_TAG}"


def _lease(client: MlflowClient, name: str) -> tuple[str, float] | None:
    value = (client.get_registered_model(name).tags or {}).get(LEASE_TAG)
    if not value or " until " not in value:
        return None
    token, until = value.rsplit(" until ", 1)
    return token, _float(until) or 0.0


@contextmanager
def _registry_lease(client: MlflowClient, name: str, timeout_s: float) -> Iterator[None]:
    token = f"{uuid.uuid4().hex} {socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout_s
    rng = np.random.default_rng()
    while True:
        held = _lease(client, name)
        if held is None or held[1] < time.time():
            client.set_registered_model_tag(name, LEASE_TAG,
                                            f"{token} until {time.time() + LEASE_S:.0f}")
            time.sleep(LEASE_SETTLE_S)
            held = _lease(client, name)
            if held is not None and held[0] == token:
                break
        if time.monotonic() > deadline:
            holder = held[0].split(" ", 1)[-1] if held else "another process"
            raise TimeoutError(f"registered model '{name}': {holder} has been deciding its "
                               f"champion for over {timeout_s:g} s (tag {LEASE_TAG})")
        time.sleep(LEASE_SETTLE_S * float(rng.uniform(0.5, 1.5)))
    try:
        yield
    finally:
        try:
            held = _lease(client, name)
            if held is not None and held[0] == token:
                client.delete_registered_model_tag(name, LEASE_TAG)
        except MlflowException:
            pass  # it expires by itself


def promote_if_better(model_name: str, version: int | str, *,
                      scenario: str | Path | Scenario, eval_seed: int, episodes: int,
                      metric: str = "budget_burn_mean", client: MlflowClient | None = None,
                      alias: str = CHAMPION,
                      baselines: Mapping[str, Mapping[str, Any]] | None = None,
                      alpha: float = ALPHA, test: str = "auto",
                      require_verification: bool = False) -> dict[str, Any]:
    """Make ``version`` the ``champion`` only with evidence, on the same incidents.

    Everything is compared on seeds ``eval_seed .. eval_seed+episodes-1``, per seed: each
    version's outcomes and budget burns come from its version tag, its run's
    ``eval_holdout.json`` (:func:`log_holdout`), else a fresh evaluation of its policy;
    ``baselines`` (name -> a :func:`per_seed_record`, e.g. the ``configured`` and
    ``best_static`` procedures of the same comparison) are given by the caller, and the
    configured procedure is evaluated when they do not include it. The version becomes
    champion only if

    - it recovers at least as many incidents as the champion and every baseline, and
    - its budget burn is lower than the champion's (the configured procedure's when there is
      no champion yet): lower mean, and a one-sided paired test (:func:`paired_test`) with
      p < ``alpha``.

    Decisions are serialised (:func:`promotion_lock`): reading the champion, comparing and
    moving the alias happen as one step, so two trainings finishing together each compare
    with the champion of the moment and the better one ends up champion. The alias is
    re-read just before it is moved (a change means: decide again) and after.

    With ``require_verification`` (the experiment names a real backend), the version's run
    must also carry a passed verification (tag ``shadowrl.verified`` = ``passed``, see
    :func:`log_verification`); without one it is not promoted, whatever the evidence.

    The decision, the recovered shares, the mean burns, the test and its p-value (and the
    verification status, when required) are tagged on the version and on its run.
    ``metric`` (``budget_burn_mean`` or ``downtime_mean``) is what ``new``/``old`` report.
    Returns ``{"promoted", "champion_version", "new", "old", "metric", "sources", "reason",
    "recovered", "budget_burn", "test", "p_value", "seeds"}`` (plus ``verified`` when
    required).
    """
    if metric not in PROMOTION_METRICS:
        raise ValueError(f"metric must be one of {', '.join(LOWER_IS_BETTER)}, got {metric!r}")
    client = _client(client)
    version = str(version)
    sc = as_scenario(scenario)
    new_mv = _resolve_version(client, f"models:/{model_name}/{version}")
    # what does not depend on the champion is gathered before taking the lock
    new, new_src = _version_evidence(client, new_mv, sc, eval_seed, episodes)
    refs = {name: rec for name, rec in (baselines or {}).items()
            if _record_matches(rec, eval_seed, episodes)}
    sources = {"new": new_src}
    verified, unverified = (_verification_gate(client, new_mv) if require_verification
                            else (None, None))
    if "configured" not in refs:
        refs["configured"] = _configured_record(sc, eval_seed, episodes)
        sources["configured"] = "evaluated"
    with promotion_lock(model_name, client):
        for _ in range(3):
            champion = _alias_version(client, model_name, alias)
            result = _decide(client, model_name, version, alias, champion, new, dict(sources),
                             refs, sc, eval_seed, episodes, metric, alpha, test)
            if verified is not None:
                result["verified"] = verified
            if unverified is not None and result["promoted"]:
                result.update(promoted=False, reason=f"not promoted: {unverified} (the "
                              f"held-out evidence alone would have promoted it)",
                              champion_version=str(champion.version) if champion else "")
            elif unverified is not None:
                result["reason"] += f"; besides, {unverified}"
            if not result["promoted"]:
                break
            if _same_version(_alias_version(client, model_name, alias), champion):
                client.set_registered_model_alias(model_name, alias, version)
                now = _alias_version(client, model_name, alias)
                if now is None or str(now.version) != version:
                    result.update(promoted=False, champion_version=str(now.version) if now
                                  else "", reason="not promoted: another promotion moved the "
                                  f"{alias} at the same time (now version "
                                  f"{now.version if now else 'none'})")
                break
        _record_decision(client, new_mv, result)
    return result


def _same_version(a: Any | None, b: Any | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and str(a.version) == str(b.version))


def _decide(client: MlflowClient, model_name: str, version: str, alias: str, champion: Any,
            new: Mapping[str, Any], sources: dict[str, str],
            refs: Mapping[str, Mapping[str, Any]], sc: Scenario, eval_seed: int,
            episodes: int, metric: str, alpha: float, test: str) -> dict[str, Any]:
    """The decision for ``version`` against ``champion`` (None: none yet) and the baselines;
    moves nothing."""
    key = f"{HOLDOUT_PREFIX}{metric}"
    field = PROMOTION_METRICS[metric]
    seeds = f"{eval_seed}+{episodes}"
    result: dict[str, Any] = {"metric": key, "new": float(np.mean(new[field])), "old": None,
                              "sources": sources, "seeds": seeds}
    contenders: dict[str, Mapping[str, Any]] = {"new": new}
    if champion is not None and str(champion.version) == version:
        result.update(promoted=False, champion_version=version, old=result["new"],
                      reason=f"version {version} is already the {alias}",
                      recovered={"new": _recovered(new) / episodes},
                      budget_burn={"new": float(np.mean(new["budget_burn"]))},
                      test=None, p_value=None)
        result["sources"] = {"new": sources["new"]}
        return result
    if champion is not None:
        old, result["sources"]["old"] = _version_evidence(client, champion, sc, eval_seed,
                                                          episodes)
        result["old"] = float(np.mean(old[field]))
        contenders["old"] = old
    contenders.update(refs)
    result["recovered"] = {k: _recovered(r) / episodes for k, r in contenders.items()}
    result["budget_burn"] = {k: float(np.mean(r["budget_burn"])) for k, r in contenders.items()}
    against = "old" if "old" in contenders else "configured"
    ref = contenders[against]
    p, test_name = paired_test(new["budget_burn"], ref["budget_burn"], test)
    result.update(test=test_name, p_value=p)
    fewer = [k for k in contenders if k != "new" and _recovered(new) < _recovered(contenders[k])]
    label = (f"version {champion.version}" if against == "old" else "the configured procedure")
    lower = result["budget_burn"]["new"] < result["budget_burn"][against]
    if fewer:
        reason = (f"not promoted: recovers {_recovered(new)}/{episodes}, fewer than "
                  + ", ".join(f"{'version ' + str(champion.version) if k == 'old' else k} "
                              f"({_recovered(contenders[k])}/{episodes})" for k in fewer))
    elif not lower or p >= alpha:
        reason = (f"not promoted: budget burn {result['budget_burn']['new']:.4%} vs "
                  f"{result['budget_burn'][against]:.4%} for {label} is not lower with "
                  f"evidence (p = {p:.4f} >= {alpha:g}, {test_name})" if lower else
                  f"not promoted: budget burn {result['budget_burn']['new']:.4%} is not lower "
                  f"than {result['budget_burn'][against]:.4%} for {label}")
    else:
        reason = (f"promoted: recovers {_recovered(new)}/{episodes} (no fewer than "
                  f"{'the champion and ' if against == 'old' else ''}"
                  f"{', '.join(k for k in refs)}), budget burn "
                  f"{result['budget_burn']['new']:.4%} < {result['budget_burn'][against]:.4%} "
                  f"for {label} (p = {p:.4f} < {alpha:g}, {test_name})")
    promoted = reason.startswith("promoted")
    result.update(promoted=promoted, reason=reason,
                  champion_version=version if promoted else
                  (str(champion.version) if champion is not None else ""))
    return result


def _record_decision(client: MlflowClient, mv: Any, result: Mapping[str, Any]) -> None:
    """Tag the decision and its numbers on the model version and on its run."""
    tags = {"shadowrl.promotion": f"{result['reason']}; seeds {result['seeds']}",
            "shadowrl.promotion.promoted": str(bool(result["promoted"])).lower(),
            "shadowrl.promotion.seeds": result["seeds"]}
    if result.get("test"):
        tags["shadowrl.promotion.test"] = str(result["test"])
    if result.get("p_value") is not None:
        tags["shadowrl.promotion.p_value"] = _tag_number(result["p_value"])
    if result.get("verified") is not None:
        tags["shadowrl.promotion.verified"] = str(result["verified"])
    for who, share in (result.get("recovered") or {}).items():
        tags[f"shadowrl.promotion.recovered.{who}"] = _tag_number(share)
    for who, burn in (result.get("budget_burn") or {}).items():
        tags[f"shadowrl.promotion.budget_burn.{who}"] = _tag_number(burn)
    for k, v in tags.items():
        client.set_model_version_tag(mv.name, str(mv.version), k, v[:_MAX_TAG])
    if mv.run_id:
        try:
            for k, v in tags.items():
                client.set_tag(mv.run_id, k, v[:_MAX_TAG])
        except MlflowException:
            pass  # the run is gone: the version keeps the record


# --------------------------------------------------------------------------- export sources


def _download_run_file(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(dst)))


def _find_run_artifact(client: MlflowClient, run_id: str, name: str,
                       depth: int = 2) -> str | None:
    """The run artifact path of ``name`` at the root or up to ``depth`` folders down."""
    level = [None]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            try:
                items = client.list_artifacts(run_id, folder)
            except (MlflowException, OSError):
                continue
            for item in items:
                if not item.is_dir and item.path.rsplit("/", 1)[-1] == name:
                    return item.path
                if item.is_dir:
                    nxt.append(item.path)
        level = nxt
        if not level:
            break
    return None


def _run_scenario(client: MlflowClient, run_id: str, dst: Path) -> Scenario | None:
    try:
        items = client.list_artifacts(run_id, "scenario")
    except (MlflowException, OSError):
        return None
    if not any(i.path.endswith((".yaml", ".yml")) for i in items if not i.is_dir):
        return None
    folder = Path(client.download_artifacts(run_id, "scenario", str(dst)))
    return as_scenario(_scenario_file(folder))


def _run_summary(client: MlflowClient, run_id: str, dst: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` artifact (an ``evaluate --json`` summary), if any."""
    path = _find_run_artifact(client, run_id, "summary.json", depth=1)
    if path is None:
        return None
    try:
        data = json.loads(_download_run_file(client, run_id, path, dst).read_text())
    except (OSError, ValueError, MlflowException):
        return None
    if isinstance(data, dict) and isinstance(data.get("methods"), dict):
        # an `optimize`/`train` summary: the logged procedure.yaml is its best static one
        methods = data["methods"]
        data = methods.get("best_static") or methods.get("configured")
    return data if isinstance(data, dict) else None


def _metrics_summary(m: Mapping[str, float],
                     params: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """A summary from the run's ``eval_holdout_*`` metrics (the policy's held-out numbers)
    and its ``eval_holdout_episodes`` param (a metric in runs logged before it was one)."""
    if f"{HOLDOUT_PREFIX}downtime_mean" not in m:
        return None
    out: dict[str, Any] = {"downtime_s": {"mean": m[f"{HOLDOUT_PREFIX}downtime_mean"]}}
    if f"{HOLDOUT_PREFIX}downtime_p95" in m:
        out["downtime_s"]["p95"] = m[f"{HOLDOUT_PREFIX}downtime_p95"]
    episodes = (params or {}).get(f"{HOLDOUT_PREFIX}episodes",
                                  m.get(f"{HOLDOUT_PREFIX}episodes"))
    if _float(episodes) is not None:
        out["runs"] = int(float(episodes))  # type: ignore[arg-type]
    if f"{HOLDOUT_PREFIX}recovered_rate" in m and "runs" in out:
        out["outcomes"] = {"recovered": round(m[f"{HOLDOUT_PREFIX}recovered_rate"]
                                              * out["runs"])}
    return out


def _procedure_from_file(path: Path, scenario: Scenario | None, origin: str) -> Procedure:
    try:
        return load_procedure(path, scenario)
    except SpecError as exc:
        details = "; ".join(f"line {p.line}: {p.path}: {p.message}" if p.path else
                            f"line {p.line}: {p.message}" for p in exc.problems)
        raise ValueError(f"{origin}: invalid procedure.yaml: {details}") from None


def _run_and_model(client: MlflowClient, source: str, dst: Path) -> tuple[Any, Path | None]:
    """The run a source names (None for a model version without one) and, for a model
    version, its downloaded model folder."""
    model_dir: Path | None = None
    if RUN_ID.match(source):
        run_id = source
    elif source.startswith("models:/"):
        mv = _resolve_version(client, source)
        run_id = mv.run_id or ""
        model_dir = _download_model(client, mv.name, str(mv.version), dst / "model")
    else:
        raise ValueError(f"{source}: not an MLflow run id (32 hex digits) or "
                         f"models:/NAME@ALIAS")
    if not run_id:
        return None, model_dir
    try:
        return client.get_run(run_id), model_dir
    except MlflowException as exc:
        if model_dir is None and _not_found(exc):
            raise ValueError(f"{source}: no MLflow run with this id at "
                             f"{_uris(client)[0]}") from None
        if model_dir is None:
            raise
        return None, model_dir


def _logged_procedure(client: MlflowClient, source: str, run: Any, model_dir: Path | None,
                      dst: Path) -> tuple[Path, Scenario | None]:
    """The procedure file and scenario logged with the run, else with the model version."""
    proc_file: Path | None = None
    scenario: Scenario | None = None
    if run is not None:
        path = _find_run_artifact(client, run.info.run_id, "procedure.yaml")
        if path is not None:
            proc_file = _download_run_file(client, run.info.run_id, path, dst / "run")
        scenario = _run_scenario(client, run.info.run_id, dst / "run-scenario")
    if model_dir is not None:
        if proc_file is None:
            art = _model_artifact(model_dir, "procedure")
            proc_file = _procedure_file(art) if art is not None else None
        if scenario is None:
            art = _model_artifact(model_dir, "scenario")
            scenario = as_scenario(_scenario_file(art)) if art is not None else None
    if proc_file is None:
        where = "run" if model_dir is None else "model version (and its run)"
        raise LookupError(f"{source}: the {where} has no procedure.yaml artifact (log one "
                          f"with shadowrl.integrations.mlflow.log_run_files or "
                          f"log_policy_model(procedure_path=...))")
    return proc_file, scenario


def load_export_source(source: str, client: MlflowClient | None = None) -> ExportSource:
    """The procedure behind an MLflow run id or ``models:/NAME@ALIAS`` (or ``/VERSION``).

    A run: its ``procedure.yaml`` artifact, checked against its ``scenario/`` artifact when
    present. A model version: its run's ``procedure.yaml``, else the model's own
    ``procedure`` artifact (and the model's scenario). The evaluation comes from the run's
    ``summary.json``, else the procedure file's header (``shadowrl optimize`` writes one),
    else the run's ``eval_holdout_*`` metrics.
    Raises ValueError (unknown run/model/alias) or LookupError (no procedure logged).
    """
    client = _client(client)
    with tempfile.TemporaryDirectory(prefix="shadowrl-export-") as tmp:
        dst = Path(tmp)
        run, model_dir = _run_and_model(client, source, dst)
        proc_file, scenario = _logged_procedure(client, source, run, model_dir, dst)
        procedure = _procedure_from_file(proc_file, scenario, source)
        header = read_header(proc_file.read_text(errors="replace"))
        command, header_eval = header.command, header.evaluation
        evaluation = None
        if run is not None:
            evaluation = _run_summary(client, run.info.run_id, dst / "summary")
        evaluation = evaluation or header_eval
        if evaluation is None and run is not None:
            evaluation = _metrics_summary(run.data.metrics, run.data.params)
        if command is None and run is not None:
            command = run.data.tags.get("shadowrl.command")
        book = _logged_runbook(client, run, model_dir, scenario, dst, source)
    scenario_name = scenario.name if scenario is not None else None
    if scenario_name is None and run is not None:
        scenario_name = run.data.tags.get("shadowrl.scenario")
    if book is not None:  # an adaptive runbook was distilled: it is what the model exports
        return ExportSource(procedure=book.default.procedure, scenario=scenario,
                            name=book.name, origin=source, command=command,
                            scenario_name=scenario_name, verification=header.verification,
                            runbook=book)
    return ExportSource(procedure=procedure, scenario=scenario, name=procedure.name,
                        origin=source, evaluation=evaluation, command=command,
                        scenario_name=scenario_name, verification=header.verification)


def _logged_runbook(client: MlflowClient, run: Any, model_dir: Path | None,
                    scenario: Scenario | None, dst: Path, origin: str) -> Runbook | None:
    """The runbook logged with the run (else the model version) when it has branches: a
    runbook that is one procedure alone adds nothing to procedure.yaml."""
    from shadowrl.core.runbook import runbook_from_data
    from shadowrl.core.spec import load_yaml

    path: Path | None = None
    if run is not None:
        found = _find_run_artifact(client, run.info.run_id, "runbook.yaml", depth=1)
        if found is not None:
            path = _download_run_file(client, run.info.run_id, found, dst / "runbook")
    if path is None and model_dir is not None:
        path = _model_artifact(model_dir, "runbook")
    if path is None or not path.is_file():
        return None
    try:
        data, lines = load_yaml(path.read_bytes(), f"{origin}: runbook.yaml")
        book = runbook_from_data(data, f"{origin}: runbook.yaml", lines, scenario)
    except SpecError as exc:
        raise ValueError(f"{origin}: invalid runbook.yaml: {exc}") from None
    return book if book.branches else None
