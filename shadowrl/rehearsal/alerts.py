"""Alerts from rehearsals, and the sinks that deliver them.

A rehearsal that fails, is too slow or makes new errors produces :class:`Alert` objects.
Sinks deliver them: :class:`ConsoleSink` (stderr, for people at a terminal),
:class:`FileSink` (a JSON array, for CI artefacts) and :class:`WebhookSink` (the Prometheus
Alertmanager webhook format, so any receiver that understands Alertmanager - Alerta,
Grafana OnCall, PagerDuty bridges, custom services - takes them unchanged).

:func:`dispatch` sends to every sink and never lets a broken sink crash a run: a failed
delivery is logged, reported back, and the alerts go to a fallback file so they are not lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowrl import __version__
from shadowrl.core.atomic import atomic_write_json

__all__ = [
    "KINDS",
    "SEVERITIES",
    "WEBHOOK_ENV",
    "Alert",
    "AlertSink",
    "AlertSinkError",
    "ConsoleSink",
    "FileSink",
    "WebhookError",
    "WebhookSink",
    "alertmanager_payload",
    "dispatch",
    "sinks_from_options",
]

logger = logging.getLogger("shadowrl.rehearsal.alerts")

KINDS = ("rollback_failed", "rollback_ineffective", "too_slow", "new_errors")
SEVERITIES = ("critical", "warning")
WEBHOOK_ENV = "SHADOWRL_ALERT_WEBHOOK"

#: Alertmanager's zero time: "no end known", i.e. the alert is still firing.
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class Alert:
    """One finding of a rehearsal that an engineer should act on.

    ``to_json`` is the public ``simulate --json`` contract (docs/architecture.md); the other
    fields give sinks enough context to route and reproduce it (``seed``, ``run``).
    """

    kind: str
    severity: str
    step: str | None
    message: str
    scenario: str
    incident: str | None = None
    run: int | None = None
    seed: int | None = None
    value: float | None = None
    at_s: float | None = None

    def __post_init__(self) -> None:
        # Catch typos in rule code early: receivers route on these values.
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r}; expected one of {KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"unknown alert severity {self.severity!r}; expected one of {SEVERITIES}"
            )

    def to_json(self) -> dict[str, Any]:
        """The four keys of the ``simulate --json`` contract, nothing more."""
        return {"kind": self.kind, "severity": self.severity, "step": self.step,
                "message": self.message}

    def to_record(self) -> dict[str, Any]:
        """Every field, for files and logs that must be replayable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_record`; unknown keys are ignored (newer writers)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@runtime_checkable
class AlertSink(Protocol):
    """Something that delivers alerts. ``send`` may raise; :func:`dispatch` contains it."""

    name: str

    def send(self, alerts: Sequence[Alert]) -> None: ...


class AlertSinkError(RuntimeError):
    """A sink could not deliver its alerts."""


class WebhookError(AlertSinkError):
    """The webhook did not accept the alerts after the last attempt."""

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


# --------------------------------------------------------------------------- console


_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow"}


class ConsoleSink:
    """A short table on stderr, so stdout stays clean for ``--json``."""

    name = "console"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)

    def send(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        table = Table(title=f"shadowrl alerts ({len(alerts)})", title_justify="left")
        for column in ("severity", "kind", "scenario", "step", "message"):
            table.add_column(column, overflow="fold")
        for alert in alerts:
            # Text, not str: messages may contain "[...]" that rich would read as markup.
            table.add_row(
                Text(alert.severity, style=_SEVERITY_STYLE.get(alert.severity, "")),
                Text(alert.kind),
                Text(alert.scenario),
                Text(alert.step or "-"),
                Text(alert.message),
            )
        self.console.print(table)


# --------------------------------------------------------------------------- file


_FILE_LOCK = threading.Lock()


class FileSink:
    """A JSON array of alert records that grows across runs.

    Each write replaces the file atomically, so a crash leaves the old or the new array,
    never half of one. An existing file that is not a JSON array is an error rather than
    being overwritten: it may hold someone's data. Writers in one process are serialised;
    separate processes should use separate files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def read(self) -> list[dict[str, Any]]:
        """The records already in the file (empty when it is missing or empty)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        if not text.strip():
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlertSinkError(f"{self.path}: not valid JSON ({exc}); not overwriting") from exc
        if not isinstance(data, list):
            raise AlertSinkError(f"{self.path}: expected a JSON array of alerts; not overwriting")
        return data

    def send(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        with _FILE_LOCK:
            records = self.read()
            records.extend(alert.to_record() for alert in alerts)
            atomic_write_json(self.path, records)


# --------------------------------------------------------------------------- webhook


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _labels(alert: Alert) -> dict[str, str]:
    # Labels identify the alert (Alertmanager dedups and routes on them), so they hold
    # only stable facts; per-run details (run, seed, value) go to annotations.
    raw = {
        "alertname": f"ShadowRollback{_camel(alert.kind.removeprefix('rollback_'))}",
        "severity": alert.severity,
        "scenario": alert.scenario,
        "step": alert.step,
        "incident": alert.incident,
        "kind": alert.kind,
    }
    return {k: str(v) for k, v in raw.items() if v is not None}


def _summary(alert: Alert) -> str:
    where = f" at step {alert.step}" if alert.step else ""
    return f"{alert.kind.replace('_', ' ').capitalize()}{where} in scenario {alert.scenario}"


def _annotations(alert: Alert) -> dict[str, str]:
    notes = {"summary": _summary(alert), "description": alert.message}
    extra = {"run": alert.run, "seed": alert.seed, "value": alert.value, "at_s": alert.at_s}
    notes.update({k: str(v) for k, v in extra.items() if v is not None})
    return notes


def _fingerprint(labels: Mapping[str, str]) -> str:
    """Stable 16-hex-digit id of a label set (Alertmanager's fingerprints are 64-bit)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def _group_key(group_labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
    return "{}:{" + inner + "}"


def alertmanager_payload(
    alerts: Sequence[Alert],
    *,
    receiver: str = "shadowrl",
    external_url: str | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The Alertmanager webhook body (``"version": "4"``) for one group of alerts.

    Grouped by scenario: ``groupLabels`` holds ``scenario`` when all alerts share it.
    """
    starts_at = now or _now_rfc3339()
    generator = external_url or ""
    items = []
    for alert in alerts:
        labels = _labels(alert)
        items.append({
            "status": "firing",
            "labels": labels,
            "annotations": _annotations(alert),
            "startsAt": starts_at,
            "endsAt": _ZERO_TIME,
            "generatorURL": generator,
            "fingerprint": _fingerprint(labels),
        })
    common_labels = _common([item["labels"] for item in items])
    group_labels = {k: v for k, v in common_labels.items() if k == "scenario"}
    return {
        "version": "4",
        "groupKey": _group_key(group_labels),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([item["annotations"] for item in items]),
        "externalURL": external_url or "",
        "alerts": items,
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected POST into a body-less GET; a webhook must not."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: HTTPMessage, newurl: str,
    ) -> urllib.request.Request | None:
        return None


class _Deadline:
    """The total time one attempt may take. A socket timeout bounds each read, so a
    receiver that trickles its answer a byte at a time would hold a request open forever;
    when the deadline passes, the attempt's sockets are shut down, which ends any read
    blocked on them."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _DeadlineConnection(http.client.HTTPConnection):
    """A connection whose socket the deadline tracks once connected (HTTP, or HTTPS below)."""

    deadline: _Deadline | None = None

    def connect(self) -> None:
        super().connect()
        if self.deadline is not None and self.sock is not None:
            self.deadline.track(self.sock)


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    """urllib's handler (proxies included) on connections the deadline can cut."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = _DeadlineConnection(host, **kwargs)
            conn.deadline = self.deadline
            return conn

        return self.do_open(connection, req)  # type: ignore[arg-type]


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPSConnection:
            conn = _DeadlineHTTPSConnection(host, **kwargs)
            conn.deadline = self.deadline
            return conn

        return self.do_open(connection, req,  # type: ignore[arg-type]
                            context=self._context)  # type: ignore[attr-defined]


def check_webhook_url(url: str) -> None:
    """Refuse what cannot be a webhook before any work is done: an http(s) URL with a host.
    The message shows the URL as given, so a user sees the typo."""
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # e.g. a port that is not a number
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or not port_ok:
        raise ValueError(f"webhook URL must be http:// or https:// with a host, got {url!r}")


def webhook_url_from(option: str | None) -> str | None:
    """The webhook the options ask for: the option, else ``$SHADOWRL_ALERT_WEBHOOK``."""
    url = option if option is not None else os.environ.get(WEBHOOK_ENV, "").strip()
    return url or None


def _redact(url: str) -> str:
    """scheme://host[:port] only: paths and queries of webhook URLs often hold tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class WebhookSink:
    """POSTs alerts to an Alertmanager-compatible webhook receiver.

    ``retries`` is the number of attempts after the first. Connection errors, timeouts,
    5xx and 429 are retried after ``backoff_s``, doubling each time; other 4xx (and 3xx)
    mean the request itself is wrong and are not retried. Alerts of different scenarios go
    in separate requests, as Alertmanager would group them.

    Time is bounded in total, not per read: ``timeout_s`` is the most one attempt may take
    (connecting, sending, and receiving the status line and headers; a 2xx answer delivers
    the alerts, so its body is not waited for), and ``deadline_s`` the most one request may
    take with every retry and backoff. A receiver that trickles its answer cannot hold a
    rehearsal past them.
    """

    def __init__(
        self,
        url: str,
        receiver: str = "shadowrl",
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        external_url: str | None = None,
        deadline_s: float = 30.0,
    ) -> None:
        check_webhook_url(url)
        if retries < 0 or timeout_s <= 0 or backoff_s < 0 or deadline_s <= 0:
            raise ValueError("need retries >= 0, timeout_s > 0, backoff_s >= 0, "
                             "deadline_s > 0")
        self.url = url
        self.receiver = receiver
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s
        self.external_url = external_url
        self.name = f"webhook:{_redact(url)}"

    def send(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        groups: dict[str, list[Alert]] = {}
        for alert in alerts:
            groups.setdefault(alert.scenario, []).append(alert)
        for group in groups.values():
            payload = alertmanager_payload(group, receiver=self.receiver,
                                           external_url=self.external_url)
            self._post(json.dumps(payload).encode("utf-8"))

    def _post(self, body: bytes) -> None:
        attempts = self.retries + 1
        status: int | None = None
        end = time.monotonic() + self.deadline_s
        for attempt in range(1, attempts + 1):
            budget = min(self.timeout_s, end - time.monotonic())
            try:
                self._attempt(body, budget)
                return
            except urllib.error.HTTPError as exc:
                status = exc.code
                exc.close()
                reason = f"HTTP {exc.code} {exc.reason}"
                if not (exc.code >= 500 or exc.code == 429):
                    raise WebhookError(f"{reason} (not retried)",
                                       attempts=attempt, status=status) from exc
                error: Exception = exc
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                status = None
                reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
                error = exc
            delay = self.backoff_s * 2 ** (attempt - 1)
            if attempt == attempts or time.monotonic() + delay >= end:
                spent = f"after {attempt} attempt(s)"
                if attempt < attempts:
                    spent += f" ({self.deadline_s:g} s in all)"
                raise WebhookError(f"{reason} {spent}", attempts=attempt,
                                   status=status) from error
            logger.warning("%s: attempt %d/%d failed (%s); retrying in %.2fs",
                           self.name, attempt, attempts, reason, delay)
            time.sleep(delay)

    def _attempt(self, body: bytes, budget: float) -> None:
        """One POST within ``budget`` seconds in all; raises what urllib raises, or
        TimeoutError when the deadline cut it."""
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json",
                     "User-Agent": f"shadowrl/{__version__}"},
        )
        deadline = _Deadline(max(budget, 0.001))
        opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTPHandler(deadline),
                                             _DeadlineHTTPSHandler(deadline))
        started = time.monotonic()
        try:
            # a 2xx status delivers the alerts: the body is not read, so a receiver that
            # trickles it costs nothing
            opener.open(request, timeout=max(budget, 0.001)).close()
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            # the per-read socket timeout equals the budget, so on a loaded machine it can
            # fire just before the deadline's timer: either way the budget is spent
            spent = deadline.expired or time.monotonic() - started >= budget
            if spent and not isinstance(exc, urllib.error.HTTPError):
                raise TimeoutError(f"no answer within {budget:.3g} s (total)") from exc
            raise
        finally:
            deadline.cancel()


# --------------------------------------------------------------------------- dispatch


def dispatch(
    alerts: Sequence[Alert],
    sinks: Sequence[AlertSink],
    fallback_file: Path | None = None,
) -> list[str]:
    """Send ``alerts`` to every sink; return one error string per failed delivery.

    A failing sink never stops the others or the run. When any sink failed, the alerts are
    also written to ``fallback_file`` (unless a FileSink already wrote them there), so a
    dead webhook does not lose them.
    """
    if not alerts:
        return []
    errors: list[str] = []
    written: set[Path] = set()
    for sink in sinks:
        try:
            sink.send(alerts)
        except Exception as exc:  # a sink must never crash the run
            logger.error("alert sink %s failed: %s", sink.name, exc)
            errors.append(f"{sink.name}: {exc}")
        else:
            if isinstance(sink, FileSink):
                written.add(sink.path.resolve())
    if errors and fallback_file is not None and Path(fallback_file).resolve() not in written:
        fallback = FileSink(fallback_file)
        try:
            fallback.send(alerts)
        except Exception as exc:
            logger.error("fallback alert file %s failed: %s", fallback_file, exc)
            errors.append(f"{fallback.name}: {exc}")
        else:
            logger.warning("wrote %d alert(s) to fallback file %s", len(alerts), fallback_file)
    return errors


def sinks_from_options(
    webhook_url: str | None,
    file_path: Path | None,
    console: bool,
) -> list[AlertSink]:
    """The sinks the CLI options ask for; ``$SHADOWRL_ALERT_WEBHOOK`` when no URL is given.

    Order matters for :func:`dispatch`: the file comes before the webhook, so a fallback to
    the same file does not write the alerts twice.
    """
    sinks: list[AlertSink] = []
    if console:
        sinks.append(ConsoleSink())
    if file_path is not None:
        sinks.append(FileSink(file_path))
    url = webhook_url_from(webhook_url)
    if url:
        sinks.append(WebhookSink(url))
    return sinks
