"""Where the deployment's next peak is: its load history, fetched and forecast.

The service rehearses ahead of the peak at the forecast load (``rehearse.at: peak``), so a
verdict says how the rollback would do at the next peak, not only now. The history is a
file, or a Prometheus ``query_range`` fetched before each such rehearsal and kept in the
job's folder (the rehearsal then reads it like any history file).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from shadowrl.core.atomic import atomic_write_text

MAX_POINTS = 11_000  # Prometheus refuses more than 11,000 points per series
MAX_BYTES = 64 * 1024 * 1024


class HistoryFetchError(RuntimeError):
    """A Prometheus server that could not give the history (named, with why)."""


def fetch_prometheus(base_url: str, query: str, range_s: float, step_s: float, dest: Path,
                     *, timeout_s: float = 30.0, now: float | None = None) -> Path:
    """Fetch ``query`` over the last ``range_s`` into ``dest`` (a ``query_range`` JSON
    file, written atomically); the step grows if the range would exceed Prometheus' limit."""
    end = time.time() if now is None else now
    step = max(step_s, range_s / MAX_POINTS)
    params = urllib.parse.urlencode({"query": query, "start": f"{end - range_s:.3f}",
                                     "end": f"{end:.3f}", "step": f"{step:g}"})
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            raw = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise HistoryFetchError(f"{base_url}: HTTP {exc.code} for query_range") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HistoryFetchError(f"{base_url}: cannot fetch the history: {reason}") from None
    if len(raw) > MAX_BYTES:
        raise HistoryFetchError(f"{base_url}: the history is over {MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise HistoryFetchError(f"{base_url}: query_range did not answer JSON") from None
    if not isinstance(data, dict) or data.get("status") != "success":
        error = data.get("error") if isinstance(data, dict) else None
        raise HistoryFetchError(f"{base_url}: query_range failed: {error or 'no success'}")
    atomic_write_text(dest, json.dumps(data))
    return dest


def forecast_peak(path: Path, fmt: str | None = None, column: str = "value"
                  ) -> dict[str, Any]:
    """The next forecast peak within a day of the history's end: when (epoch seconds) and
    its load as a multiple of the history's mean."""
    import numpy as np

    from shadowrl.traffic.history import DAY_S, SeasonalForecast, load_series

    series = load_series(path, fmt, column=column)
    model = SeasonalForecast.fit(series)
    offset = model.peak_offset_s(DAY_S)
    at = float(series.t[-1]) + offset
    mean, _lo, _hi = model.predict_at(np.asarray([at]))
    level = float(np.mean(series.v)) or 1.0
    return {"peak_at": at, "load": round(float(mean[0]) / level, 3)}
