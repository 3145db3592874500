"""Generate ``envs/history/checkout_rps.csv``: a synthetic e-commerce request rate.

Fourteen days at 5-minute steps with a daily season (night trough, lunch bump, evening
peak), a weekly season (busier Friday, quieter weekend), a slight growth trend, correlated
noise and three injected excursions whose positions are known (``EXCURSIONS``), so tests
can check that ``shadowrl.traffic.history`` finds them and forecasts the right peak.

Deterministic: the same seed always writes the same bytes. Prints a JSON summary.

    python benchmarks/make_history.py [--seed N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

START = datetime(2024, 3, 4, tzinfo=timezone.utc)  # a Monday, 00:00 UTC
DAYS = 14
STEP_S = 300
SEED = 20240304
MEAN_RPS = 400.0
TREND_PER_DAY = 0.002
# Monday .. Sunday multipliers of the daily level.
WEEKDAY_FACTOR = (1.0, 1.0, 1.02, 1.03, 1.06, 0.9, 0.85)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "envs" / "history" / "checkout_rps.csv"


@dataclass(frozen=True)
class Injected:
    """One injected excursion; ``start_s`` is seconds after ``START``."""

    kind: str  # spike | dip | ramp
    start_s: float
    duration_s: float
    magnitude: float  # relative deviation at the excursion's extreme (signed)

    def relative(self, offset_s: np.ndarray) -> np.ndarray:
        """Relative deviation added to the load at ``offset_s`` (0 outside the excursion)."""
        x = np.asarray(offset_s, dtype=float) - self.start_s
        out = np.zeros_like(x)
        inside = (x >= 0) & (x < self.duration_s)
        xi = x[inside]
        if self.kind == "spike":  # 10-minute rise, exponential decay
            rise = np.clip(xi / 600.0, 0.0, 1.0)
            decay = np.exp(-np.clip(xi - 600.0, 0.0, None) / (self.duration_s / 3.0))
            out[inside] = self.magnitude * rise * decay
        elif self.kind == "dip":  # 10-minute fall, flat, 15-minute recovery
            fall = np.clip(xi / 600.0, 0.0, 1.0)
            recover = np.clip((self.duration_s - xi) / 900.0, 0.0, 1.0)
            out[inside] = self.magnitude * np.minimum(fall, recover)
        elif self.kind == "ramp":  # slow linear growth, then cut off at once
            out[inside] = self.magnitude * xi / self.duration_s
        else:
            raise ValueError(f"unknown excursion kind {self.kind!r}")
        return out


EXCURSIONS = (
    Injected("spike", start_s=3 * 86400 + 13 * 3600, duration_s=45 * 60, magnitude=1.5),
    Injected("dip", start_s=8 * 86400 + 10.5 * 3600, duration_s=90 * 60, magnitude=-0.55),
    Injected("ramp", start_s=10 * 86400 + 8 * 3600, duration_s=6 * 3600, magnitude=0.6),
)


def _bump(tod_s: np.ndarray, centre_h: float, width_h: float) -> np.ndarray:
    d = (np.asarray(tod_s, dtype=float) / 3600.0 - centre_h + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width_h) ** 2)


def daily_shape(tod_s: np.ndarray) -> np.ndarray:
    """Relative load by time of day (UTC seconds): trough near 04:00, peak in the evening."""
    return 0.55 + 0.25 * _bump(tod_s, 11.5, 2.5) + 0.45 * _bump(tod_s, 20.5, 2.0)


def true_daily_peak_s() -> float:
    """Time of day (seconds after midnight UTC) at which ``daily_shape`` peaks."""
    grid = np.arange(0.0, 86400.0, 10.0)
    return float(grid[np.argmax(daily_shape(grid))])


def generate(seed: int = SEED, days: int = DAYS) -> tuple[np.ndarray, np.ndarray]:
    """Return (unix seconds, requests/s) for ``days`` days from ``START``."""
    rng = np.random.default_rng(seed)
    n = days * 86400 // STEP_S
    offset = np.arange(n, dtype=float) * STEP_S
    day = (offset // 86400).astype(int)
    shape = daily_shape(offset % 86400)
    shape /= daily_shape(np.arange(0.0, 86400.0, STEP_S)).mean()
    weekday = np.asarray(WEEKDAY_FACTOR)[(START.weekday() + day) % 7]
    base = MEAN_RPS * (1.0 + TREND_PER_DAY * day) * weekday * shape
    excursion = sum(e.relative(offset) for e in EXCURSIONS)
    ar = np.empty(n)  # slow correlated wobble plus white noise
    ar[0] = 0.0
    innovations = rng.normal(0.0, 0.02, n)
    for i in range(1, n):
        ar[i] = 0.7 * ar[i - 1] + innovations[i]
    noise = ar + rng.normal(0.0, 0.025, n)
    values = np.round(base * (1.0 + excursion) * (1.0 + noise), 2)
    return START.timestamp() + offset, np.maximum(values, 0.0)


def to_csv_text(t: np.ndarray, v: np.ndarray) -> str:
    lines = ["timestamp,value"]
    for ts, val in zip(t, v, strict=True):
        stamp = (START + timedelta(seconds=float(ts) - START.timestamp())).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        lines.append(f"{stamp},{val:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    t, v = generate(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_csv_text(t, v), encoding="utf-8")
    summary = {
        "out": str(args.out),
        "seed": args.seed,
        "points": int(len(v)),
        "step_s": STEP_S,
        "mean": round(float(v.mean()), 2),
        "daily_peak_s": true_daily_peak_s(),
        "excursions": [
            {
                "kind": e.kind,
                "start_s": e.start_s,
                "duration_s": e.duration_s,
                "magnitude": e.magnitude,
            }
            for e in EXCURSIONS
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
