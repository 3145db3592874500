"""Recorded traffic: the requests a live deployment served, read for replay
(``deployment.traffic.replay``: docs/replay.md).

Three formats are read, detected from the first non-blank line (or named):

- ``mirror``: the traffic mirror's JSON Lines (``shadowrl live mirror``): a header
  ``{"format": "shadowrl-recording/1", "started": <unix s>, "percent": P}``, then one
  ``{"t", "method", "path", ...}`` object per sampled request. It holds P % of the live
  requests, so the live rate is the recorded rate x 100 / P.
- ``nginx``: an access log in nginx's ``combined`` (or ``common``) format; extra fields
  after the user agent are ignored.
- ``json``: a JSON access log, one object per line, with a time field and either a
  ``request`` line or a method and a URI (the names accepted are listed below and in
  docs/replay.md).

A :class:`Recording` is the arrivals (offsets from the first request, methods, paths,
bodies) and what they mean as load: :meth:`Recording.rate_series` is a history
:class:`~shadowrl.traffic.history.Series` of the live rate (so everything a history drives can
be driven by a recording too), and :func:`replay_pattern` is the load pattern the simulator
follows so that it sees the rates the real shadow's replay sends.

Input mistakes are a :class:`RecordingError` (a ``HistoryError``, so every caller that
reports a bad history reports a bad recording the same way) naming the file, the line and
what is wrong; reading is bounded like histories are (docs/replay.md, "What every format
must hold").
"""

from __future__ import annotations

import base64
import binascii
import calendar
import gzip
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np

from shadowrl.traffic.history import HistoryError, Series, parse_timestamp

__all__ = [
    "FORMATS",
    "Recording",
    "RecordingError",
    "load_recording",
    "replay_pattern",
    "scenario_pattern",
    "scenario_recording",
]

FORMATS = ("mirror", "nginx", "json")
MIRROR_FORMAT = "shadowrl-recording/1"

# Bounds (docs/replay.md, "What every format must hold"): a recording is streamed line by
# line, but its arrivals are held in memory, and a replay of more than a few million requests
# is a mistake (a year of logs, a wrong file) rather than a rehearsal.
MAX_RECORDING_BYTES = 2 * 2**30  # read, after decompression
MAX_LINE_CHARS = 1 << 20  # one line (a mirror line may carry a base64 body)
MAX_ARRIVALS = 2_000_000
MAX_BODY_BYTES = 256 * 1024  # one request body kept for replay; longer ones are dropped
MAX_BODIES_BYTES = 64 * 2**20  # all bodies kept; later ones are dropped
MAX_PATH_CHARS = 8192
MIN_TIMESTAMP = 0.0  # 1970-01-01
MAX_TIMESTAMP = 7_258_118_400.0  # 2200-01-01
MAX_SPAN_S = 31 * 86400.0
DEFAULT_WINDOW_S = 60.0  # the simulator holds its load for 60 s blocks (SimParams.block_s)

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,19}")
# $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent ...
_NGINX = re.compile(
    r'^(?P<addr>\S+) \S+ (?P<user>.+?) \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r"(?P<status>\d{3}|-) (?P<bytes>\S+)")
_TIME_LOCAL = re.compile(
    r"(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*([+-]\d{2}:?\d{2}|Z)?$")
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_HEX_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")

# JSON access logs: accepted field names, tried in this order, matched case-insensitively
TIME_FIELDS = ("time", "timestamp", "@timestamp", "time_local", "time_iso8601", "ts",
               "msec", "start_time", "startutc", "date")
REQUEST_FIELDS = ("request",)  # "GET /x HTTP/1.1", or an object with method and uri (Caddy)
METHOD_FIELDS = ("method", "request_method", "http_method", "verb", "requestmethod")
URI_FIELDS = ("request_uri", "uri", "path", "url", "requestpath", "request_path")
QUERY_FIELDS = ("args", "query_string", "query")


class RecordingError(HistoryError):
    """A recording that cannot be replayed; the message names the file (and line)."""


@dataclass
class Recording:
    """Recorded requests, sorted by arrival.

    ``offsets`` are seconds from the first request; ``duration_s`` is the period a loop
    repeats with (the span plus one mean gap, so a looped replay keeps the mean rate);
    ``percent`` the share of live requests the file holds (the live rate is the recorded
    one x 100 / ``percent``).
    """

    source: str
    format: str
    offsets: np.ndarray
    methods: list[str]
    paths: list[str]
    bodies: dict[int, bytes]
    percent: float
    started: float  # unix seconds of the first request
    duration_s: float
    skipped: int = 0  # lines that were not replayable requests (e.g. nginx's "-" or TLS junk)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.offsets.size)

    @property
    def live_factor(self) -> float:
        """Live requests per recorded request."""
        return 100.0 / self.percent

    def count_before(self, pos: np.ndarray | float, loop: bool) -> np.ndarray:
        """Recorded requests before recording position(s) ``pos`` (seconds from the first
        request), counting from position 0: repeats past the end when ``loop``; before 0 the
        recording always wraps (negative counts), so a replay anchored just ahead of its
        start plays the recording's tail first."""
        p = np.asarray(pos, dtype=float)
        n, d = len(self), self.duration_s
        cycle = np.floor(p / d)
        if not loop:
            cycle = np.minimum(cycle, 0.0)
        phase = np.clip(p - cycle * d, 0.0, d)
        inside = np.searchsorted(self.offsets, phase, side="left")
        inside = np.where(phase >= d, n, inside)
        return cycle * n + inside

    def live_count(self, start: np.ndarray | float, end: np.ndarray | float,
                   loop: bool) -> np.ndarray:
        """Live requests (recorded x 100 / percent) at recording positions [start, end)."""
        return (self.count_before(end, loop) - self.count_before(start, loop)) \
            * self.live_factor

    def rate_series(self, bin_s: float = DEFAULT_WINDOW_S) -> Series:
        """The live rate, requests per second per ``bin_s`` bin, as a history series (unix
        seconds of each bin's start): everything a ``deviations.history`` drives
        (``load_pattern``, excursions, forecasts) can be driven by the recording. The last
        bin may be shorter (its rate is over its own width); at least two bins."""
        d = self.duration_s
        edges = np.arange(0.0, d, float(bin_s))
        edges = np.append(edges, d)
        if edges.size < 3:
            edges = np.linspace(0.0, d, 3)
        counts = self.live_count(edges[:-1], edges[1:], loop=False)
        return Series(self.started + edges[:-1], counts / np.diff(edges),
                      name=Path(self.source).stem)

    def mean_live_rps(self) -> float:
        return len(self) * self.live_factor / self.duration_s


# --------------------------------------------------------------------------- the pattern


def replay_pattern(recording: Recording, rps: float, *, scale: float = 1.0, loop: bool = True,
                   window_s: float = DEFAULT_WINDOW_S) -> Callable[[float], float]:
    """The load pattern (a multiplier of ``rps``) that makes a simulator send what the
    replay sends: at scenario time ``x`` the recording is at position ``x * scale`` (a
    ``2x`` replay plays it twice as fast), and the pattern is the live requests recorded in
    the ``window_s`` of scenario time centred on ``x``, per scenario second, over ``rps``.

    The simulator evaluates the pattern at the middle of each 60 s load block, so its load
    in a block is exactly the replay's expected rate over that block. Past the end the
    pattern repeats (``loop``) or is 0; before the start it wraps (as the replay does).
    Accepts a float or an array, like :func:`~shadowrl.traffic.history.load_pattern`.
    """
    if rps <= 0 or scale <= 0 or window_s <= 0:
        raise ValueError("rps, scale and window_s must be positive")
    half = window_s / 2.0

    def pattern(t_s: float) -> float:
        x = np.asarray(t_s, dtype=float)
        live = recording.live_count((x - half) * scale, (x + half) * scale, loop)
        out = live / window_s / rps
        return float(out) if out.ndim == 0 else out  # type: ignore[return-value]

    return pattern


# --------------------------------------------------------------------------- a scenario's


def scenario_recording(sc: Any) -> Recording | None:
    """The recording a scenario's ``deployment.traffic.replay`` names (path relative to the
    scenario file), or None; a bad file is a ``SpecError`` on the ``replay.file`` line."""
    from shadowrl.core.spec import scenario_problem

    spec = sc.deployment.traffic.replay
    if spec is None:
        return None
    source = getattr(sc, "_source", None)
    path = Path(spec.file) if source is None else Path(source).parent / spec.file
    try:
        return load_recording(path, spec.format, percent=spec.percent)
    except FileNotFoundError:
        raise scenario_problem(sc, ("deployment", "traffic", "replay", "file"),
                               f"no such file: {path}") from None
    except HistoryError as exc:
        raise scenario_problem(sc, ("deployment", "traffic", "replay", "file"),
                               str(exc)) from None


def scenario_pattern(sc: Any, window_s: float = DEFAULT_WINDOW_S
                     ) -> Callable[[float], float] | None:
    """The simulator's load pattern for a scenario with a replay (None without one): the
    recording's rates, scaled and looped as the scenario says (see :func:`replay_pattern`)."""
    rec = scenario_recording(sc)
    if rec is None:
        return None
    spec = sc.deployment.traffic.replay
    return replay_pattern(rec, sc.deployment.traffic.rps, scale=spec.scale, loop=spec.loop,
                          window_s=window_s)


# --------------------------------------------------------------------------- loading


def load_recording(path: str | Path, fmt: str | None = "auto", *,
                   percent: float | None = None) -> Recording:
    """Read a recording (``fmt``: ``auto``, ``mirror``, ``nginx`` or ``json``); ``percent``
    overrides the share of live traffic it holds (default: the mirror header's, 100 for
    access logs). Files ending in ``.gz`` (or starting with gzip's magic) are decompressed.

    Cached by path, size and modification time: every simulated shadow of a training run
    asks for the same file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordingError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if not p.is_file():
        raise RecordingError(f"{p}: not a file")
    kind = (fmt or "auto").strip().lower()
    if kind not in ("auto", *FORMATS):
        raise RecordingError(f"{p}: unknown recording format {fmt!r} (use auto, mirror, nginx "
                             "or json)")
    return _load_cached(str(p.resolve()), st.st_size, st.st_mtime_ns, kind, percent)


@lru_cache(maxsize=4)
def _load_cached(path: str, size: int, mtime_ns: int, kind: str,
                 percent: float | None) -> Recording:
    return _Reader(Path(path), kind, percent).read()


def _open_text(path: Path) -> IO[bytes]:
    fh = path.open("rb")
    magic = fh.read(2)
    fh.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    return fh


class _Reader:
    """One pass over the file: lines in, columns of arrivals out."""

    def __init__(self, path: Path, kind: str, percent: float | None) -> None:
        self.path, self.kind, self.percent_override = path, kind, percent
        self.times: list[float] = []
        self.methods: list[str] = []
        self.paths: list[str] = []
        self.bodies: dict[int, bytes] = {}
        self.body_bytes = 0
        self.dropped_bodies = 0
        self.skipped = 0
        self.partial = 0  # the number of an unfinished last line, ignored
        self.percent = 100.0
        self.header_started: float | None = None
        self._interned: dict[str, str] = {}
        self._time_cache: tuple[str, float] = ("", 0.0)

    def err(self, line: int, message: str) -> RecordingError:
        return RecordingError(f"{self.path}:{line}: {message}")

    def lines(self) -> Iterator[tuple[int, str, bool]]:
        """(line number, text, whether it ends with a newline) of each line."""
        total = n = 0
        try:
            with _open_text(self.path) as fh:
                while raw := fh.readline(MAX_LINE_CHARS + 1):  # never more than a line's limit
                    n += 1
                    total += len(raw)
                    if total > MAX_RECORDING_BYTES:
                        raise self.err(n, f"file too large (more than {MAX_RECORDING_BYTES} "
                                          "bytes; replay a shorter range)")
                    if len(raw) > MAX_LINE_CHARS:
                        raise self.err(n, f"line too long ({len(raw)} bytes; the limit is "
                                          f"{MAX_LINE_CHARS})")
                    if b"\x00" in raw:
                        raise self.err(n, "not a text file (NUL byte)")
                    try:
                        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                    except UnicodeDecodeError:
                        text = raw.decode("latin-1")  # logs escape odd bytes; keep going
                    yield n, text.strip(), raw.endswith(b"\n")
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise RecordingError(f"{self.path}: cannot read: {exc}") from None

    def read(self) -> Recording:
        kind = self.kind
        first_line = 0
        for n, text, whole in self.lines():
            if not text:
                continue
            if not first_line:
                first_line = n
                if kind == "auto":
                    kind = self.detect(n, text)
                if kind == "mirror":
                    self.mirror_header(n, text)
                    continue
            try:
                if kind == "mirror":
                    self.mirror_line(n, text)
                elif kind == "json":
                    self.json_line(n, text)
                else:
                    self.nginx_line(n, text)
            except RecordingError:
                if whole:
                    raise
                # a last line cut short: a recording or log still being written
                self.partial = n
            if len(self.times) > MAX_ARRIVALS:
                raise self.err(n, f"more than {MAX_ARRIVALS} requests (replay a shorter "
                                  "range)")
        if not first_line:
            raise RecordingError(f"{self.path}: the file is empty")
        return self.finish(kind)

    def detect(self, n: int, text: str) -> str:
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise self.err(n, f"not JSON: {exc}") from None
            if isinstance(obj, dict) and isinstance(obj.get("format"), str) \
                    and obj["format"].startswith("shadowrl-recording/"):
                return "mirror"
            return "json"
        if _NGINX.match(text):
            return "nginx"
        raise self.err(n, "cannot tell the format: not a shadowrl recording (JSON Lines with "
                          "a 'format' header), a JSON access log (one object per line) or an "
                          "nginx combined log; name it with 'format:'")

    # ---------------------------------------------------------------- mirror

    def mirror_header(self, n: int, text: str) -> None:
        obj = self.json_object(n, text)
        fmt = obj.get("format")
        if fmt != MIRROR_FORMAT:
            raise self.err(n, f"format: expected {MIRROR_FORMAT!r} in the header line, got "
                              f"{_shown(fmt)}")
        percent = obj.get("percent", 100)
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) \
                or not 0 < percent <= 100:
            raise self.err(n, f"percent: expected a number in (0, 100], got {_shown(percent)}")
        self.percent = float(percent)
        started = obj.get("started")
        if started is not None:
            self.header_started = self.epoch(n, "started", started)

    def mirror_line(self, n: int, text: str) -> None:
        obj = self.json_object(n, text)
        if "t" not in obj:
            raise self.err(n, "t: missing (each request needs its unix time)")
        t = obj["t"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise self.err(n, f"t: expected unix seconds, got {_shown(t)}")
        self.check_time(n, "t", float(t))
        method = self.method(n, obj.get("method"), "method")
        path = self.target(n, obj.get("path"), "path")
        self.add(float(t), method, path)
        if obj.get("body_b64") is not None:
            self.body(n, obj["body_b64"])

    # ---------------------------------------------------------------- JSON logs

    def json_line(self, n: int, text: str) -> None:
        obj = self.json_object(n, text)
        low = {str(k).lower(): v for k, v in obj.items()}
        raw_t = next((low[k] for k in TIME_FIELDS if low.get(k) not in (None, "")), None)
        if raw_t is None:
            raise self.err(n, "no time field (accepted: " + ", ".join(TIME_FIELDS) + ")")
        t = self.epoch(n, next(k for k in TIME_FIELDS if low.get(k) not in (None, "")), raw_t)
        request = low.get("request")
        method: Any = None
        uri: Any = None
        if isinstance(request, dict):  # Caddy: {"request": {"method": ..., "uri": ...}}
            low = {**low, **{str(k).lower(): v for k, v in request.items()}}
            request = None
        if isinstance(request, str) and request.strip():
            parsed = self.request_line(request)
            if parsed is None:
                self.skipped += 1
                return
            method, uri = parsed
        else:
            method = next((low[k] for k in METHOD_FIELDS if low.get(k)), None)
            uri = next((low[k] for k in URI_FIELDS if low.get(k)), None)
            if method is None or uri is None:
                raise self.err(n, "no request: give 'request' (\"GET /path HTTP/1.1\") or a "
                                  "method (" + ", ".join(METHOD_FIELDS) + ") and a URI ("
                                  + ", ".join(URI_FIELDS) + ")")
            query = next((low[k] for k in QUERY_FIELDS if low.get(k)), None)
            if isinstance(uri, str) and isinstance(query, str) and "?" not in uri:
                uri = f"{uri}?{query.lstrip('?')}"
        self.add(t, self.method(n, method, "method"), self.target(n, uri, "uri"))
        body = low.get("body_b64")
        if body is not None:
            self.body(n, body)

    # ---------------------------------------------------------------- nginx

    def nginx_line(self, n: int, text: str) -> None:
        m = _NGINX.match(text)
        if m is None:
            raise self.err(n, 'not an nginx combined log line ($remote_addr - $remote_user '
                              '[$time_local] "$request" $status $body_bytes_sent ...)')
        raw_t = m.group("time")
        t = self.time_local(n, raw_t)
        parsed = self.request_line(_unescape(m.group("request")))
        if parsed is None:  # "-", a TLS handshake, a bare "GET": served 400, not replayable
            self.skipped += 1
            return
        self.add(t, parsed[0], self.target(n, parsed[1], "request"))

    # ---------------------------------------------------------------- fields

    def json_object(self, n: int, text: str) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise self.err(n, f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise self.err(n, f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def request_line(self, request: str) -> tuple[str, str] | None:
        parts = request.split()
        if len(parts) not in (2, 3) or not _METHOD.fullmatch(parts[0]):
            return None
        if not (parts[1].startswith("/") or "://" in parts[1]):
            return None
        return parts[0], parts[1]

    def method(self, n: int, value: Any, name: str) -> str:
        if not isinstance(value, str) or not _METHOD.fullmatch(value.strip().upper()):
            raise self.err(n, f"{name}: expected an HTTP method, got {_shown(value)}")
        return self.intern(value.strip().upper())

    def target(self, n: int, value: Any, name: str) -> str:
        """A request target as a path (``/x?y``): absolute URLs lose scheme and host;
        whitespace, control and non-ASCII characters are percent-encoded."""
        if not isinstance(value, str) or not value.strip():
            raise self.err(n, f"{name}: expected a path, got {_shown(value)}")
        s = value.strip()
        if "://" in s.split("?", 1)[0]:
            s = "/" + s.split("://", 1)[1].partition("/")[2]
        if not s.startswith("/"):
            raise self.err(n, f"{name}: expected a path starting with '/', got {_shown(s)}")
        if len(s) > MAX_PATH_CHARS:
            raise self.err(n, f"{name}: longer than {MAX_PATH_CHARS} characters")
        if not s.isascii() or any(c <= " " or c == "\x7f" for c in s):
            s = "".join(c if "!" <= c <= "~" else "".join(f"%{b:02X}" for b in c.encode())
                        for c in s)
        return self.intern(s)

    def intern(self, s: str) -> str:
        return self._interned.setdefault(s, s) if len(self._interned) < 100_000 else s

    def body(self, n: int, value: Any) -> None:
        if not isinstance(value, str):
            raise self.err(n, f"body_b64: expected base64 text, got {_shown(value)}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self.err(n, "body_b64: not valid base64") from None
        if len(data) > MAX_BODY_BYTES or self.body_bytes + len(data) > MAX_BODIES_BYTES:
            self.dropped_bodies += 1
            return
        self.body_bytes += len(data)
        self.bodies[len(self.times) - 1] = data

    def add(self, t: float, method: str, path: str) -> None:
        self.times.append(t)
        self.methods.append(method)
        self.paths.append(path)

    def check_time(self, n: int, name: str, t: float) -> None:
        if not MIN_TIMESTAMP <= t < MAX_TIMESTAMP:
            raise self.err(n, f"{name}: {t:g} is outside 1970-01-01..2200-01-01 (a wrong "
                              "unit?)")

    def epoch(self, n: int, name: str, value: Any) -> float:
        """Unix seconds from a number (seconds, or ms/us/ns by magnitude) or a string (ISO
        8601, a number, or nginx's ``10/Oct/2000:13:55:36 -0700``)."""
        if isinstance(value, bool):
            raise self.err(n, f"{name}: expected a time, got {_shown(value)}")
        if isinstance(value, (int, float)):
            t = float(value)
        elif isinstance(value, str):
            if _TIME_LOCAL.match(value.strip()):
                return self.time_local(n, value.strip())
            try:
                t = float(value)
            except ValueError:
                try:
                    t = parse_timestamp(value)
                except (ValueError, IndexError):
                    raise self.err(n, f"{name}: cannot parse time {_shown(value)} (ISO 8601, "
                                      "unix seconds or nginx's time_local)") from None
        else:
            raise self.err(n, f"{name}: expected a time, got {_shown(value)}")
        if not math.isfinite(t):
            raise self.err(n, f"{name}: expected a time, got {_shown(value)}")
        for limit, div in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
            if abs(t) >= limit:
                t /= div
                break
        self.check_time(n, name, t)
        return t

    def time_local(self, n: int, raw: str) -> float:
        """nginx's ``$time_local`` (``10/Oct/2000:13:55:36 -0700``): parsed by hand (strptime's
        ``%b`` follows the locale), the last value cached (log lines share seconds)."""
        if self._time_cache[0] == raw:
            return self._time_cache[1]
        m = _TIME_LOCAL.match(raw)
        month = _MONTHS.get(m.group(2).lower()) if m else None
        if m is None or month is None:
            raise self.err(n, f"time_local: cannot parse {_shown(raw)} (expected "
                              "'10/Oct/2000:13:55:36 -0700')")
        day, year, hh, mm, ss = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
        try:
            t = float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))
        except (ValueError, OverflowError):
            raise self.err(n, f"time_local: cannot parse {_shown(raw)}") from None
        if m.group(7):
            t += float("0." + m.group(7))
        zone = m.group(8)
        if zone and zone != "Z":
            z = zone.replace(":", "")
            sign = -1 if z[0] == "-" else 1
            t -= sign * (int(z[1:3]) * 3600 + int(z[3:5]) * 60)
        self.check_time(n, "time_local", t)
        self._time_cache = (raw, t)
        return t

    # ---------------------------------------------------------------- result

    def finish(self, kind: str) -> Recording:
        n = len(self.times)
        if n < 2:
            raise RecordingError(f"{self.path}: {n} replayable request(s); a recording needs "
                                 "at least 2" + (f" ({self.skipped} line(s) were not "
                                                 "replayable requests)" if self.skipped else ""))
        t = np.asarray(self.times, dtype=float)
        order = np.argsort(t, kind="stable")
        t = t[order]
        if not np.array_equal(order, np.arange(n)):
            self.methods = [self.methods[i] for i in order]
            self.paths = [self.paths[i] for i in order]
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            self.bodies = {int(rank[i]): b for i, b in self.bodies.items()}
        notes: list[str] = []
        if np.all(t == np.floor(t)):
            # whole-second times (nginx's time_local): spread each second's requests evenly
            # over it, rather than sending them in one burst
            t = t + _spread_within_seconds(t)
            notes.append("times have 1 s resolution: each second's requests are spread "
                         "evenly over it")
        span = float(t[-1] - t[0])
        if span <= 0:
            raise RecordingError(f"{self.path}: all {n} requests have the same time")
        if span > MAX_SPAN_S:
            raise RecordingError(f"{self.path}: the requests span {span / 86400:.1f} days; "
                                 f"at most {MAX_SPAN_S / 86400:.0f} can be replayed")
        if self.partial:
            notes.append(f"line {self.partial}, the last, is unfinished (a file still being "
                         "written?) and is ignored")
        if self.skipped:
            notes.append(f"{self.skipped} line(s) were not replayable requests (a \"-\" "
                         "request, a TLS handshake: answered 400) and are skipped")
        if self.dropped_bodies:
            notes.append(f"{self.dropped_bodies} request bodies were too large to keep (the "
                         "generator's default payload is sent instead)")
        percent = self.percent if self.percent_override is None else float(
            self.percent_override)
        offsets = t - t[0]
        return Recording(str(self.path), kind, offsets, self.methods, self.paths, self.bodies,
                         percent, float(t[0]), span + span / (n - 1), self.skipped, notes)


def _spread_within_seconds(t: np.ndarray) -> np.ndarray:
    """For sorted whole-second times: (i + 0.5) / k for the i-th of k requests in a second."""
    _, start, counts = np.unique(t, return_index=True, return_counts=True)
    group = np.repeat(np.arange(start.size), counts)
    rank = np.arange(t.size) - start[group]
    return (rank + 0.5) / counts[group]


def _unescape(request: str) -> str:
    """nginx writes ``"`` and non-printable bytes of ``$request`` as ``\\xHH``."""
    if "\\x" not in request:
        return request
    raw = _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), request.encode("latin-1",
                                                                                   "replace"))
    return raw.decode("utf-8", "replace")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def cache_clear() -> None:
    """Forget cached recordings (tests, or a file rewritten within its mtime resolution)."""
    _load_cached.cache_clear()


def describe(rec: Recording) -> str:
    """One line about a recording: size, span, percent and mean live rate."""
    return (f"{os.path.basename(rec.source)} ({rec.format}): {len(rec):,} requests over "
            f"{rec.duration_s:,.0f}s, {rec.percent:g} % of live traffic, mean live rate "
            f"{rec.mean_live_rps():,.1f} requests/s")
