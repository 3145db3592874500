"""The calibration report: one self-contained HTML page (plots inlined as PNG) that shows
how far the simulator is from the real shadow before and after ``shadowrl calibrate``.

A reader should be able to judge the fitted parameters from it without report.json: the
verdict on the held-out rehearsals, the load sweep against the queueing model, the timed
mechanics against the values the simulator now uses, the rehearsal-level fit, the real
shadow's own repeatability (A/A) and the parameters as written to params.yaml.

It renders from report.json's content alone, and any optional part may be missing or
empty (no fitting rehearsals, no A/A runs, a skipped fit): its section then says so.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from shadowrl.analysis.report import BREACH, SERIES  # noqa: E402
from shadowrl.core.atomic import atomic_write_text  # noqa: E402

REAL = "#212121"  # the real shadow: black points and bars
BEFORE = "#ef6c00"  # the simulator with default parameters
AFTER = SERIES  # the calibrated simulator
MECHANICS = BREACH  # the value the mechanics stage fitted
MEASURE_LABELS = {"downtime_s": "downtime (s)", "bad_requests": "bad requests"}
SIM_SERIES = (("real shadow", "real", REAL), ("simulator before", "sim_before", BEFORE),
              ("simulator after", "sim_after", AFTER))

_CSS = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; text-align: left; }
th { background: #f3f3f3; } img { max-width: 100%; } code, pre { background: #f3f3f3; }
pre { padding: 0.8em; overflow-x: auto; } .ok { color: #2e7d32; } .bad { color: #c62828; }
figure { margin: 0.5em 0 1.5em; } figcaption { font-size: 13px; color: #555; }
p.note { color: #555; }"""


# --------------------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: Any) -> str:
    """A relative error as a percentage; ``n/a`` when it could not be computed."""
    return "n/a" if _missing(x) else f"{float(x) * 100:.1f} %"


def _num(x: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant digits (no exponent below a million)."""
    if _missing(x):
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if abs(x) >= 1000:
        return f"{float(x):,.0f}"
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x)}"
    return f"{float(x):.{digits}g}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f"<p class='note'>{_esc(text)}</p>"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, fig: Any, caption: str = "") -> str:
    """A matplotlib figure as an inline PNG, with its title as alt text."""
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return (f"<figure><img alt='{_esc(title)}' src='data:image/png;base64,{_png(fig)}'>"
            f"{cap}</figure>")


def _section(title: str, *parts: str) -> str:
    return f"<h2>{_esc(title)}</h2>\n" + "\n".join(p for p in parts if p)


def _time_scale(ax: Any, values: Sequence[float], axis: str = "x") -> None:
    """A log time axis, symmetric-log when some duration is 0 s (an instant step)."""
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if values and min(values) <= 0:
        setter("symlog", linthresh=0.1)
    else:
        setter("log")


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:,.10g}"


def _plain_ticks(ax: Any, axis: str) -> None:
    """Plain numbers (20, 50, 200) on a log axis instead of powers of ten; call it once the
    data is drawn (the ticks depend on the range)."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_formatter(NullFormatter())
    if (ax.get_xscale() if axis == "x" else ax.get_yscale()) != "log" or lo <= 0:
        return  # symlog keeps its own ticks (0, 0.1, 1, 10...)
    decades = math.log10(hi / lo)
    subs = ((1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1.2
            else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if decades > 0.5
            else (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
    target.set_major_locator(LogLocator(subs=subs))


# --------------------------------------------------------------------------- header


def _verdict_html(verdict: Mapping[str, Any]) -> str:
    """The verdict in plain words, overall and per measure."""
    if not verdict or "within" not in verdict:
        return "<p><b>No verdict</b>: the held-out error could not be computed.</p>"
    ok = bool(verdict["within"])
    word = "within tolerance" if ok else "NOT within tolerance"
    head = (f"<p class='{'ok' if ok else 'bad'}'><b>Verdict: the calibrated simulator is "
            f"{word}</b> on the held-out rehearsals (tolerance "
            f"{_pct(verdict.get('tolerance'))}, or the real shadow's A/A noise where that is "
            f"larger).</p>")
    items = []
    for m, v in verdict.get("measures", {}).items():
        inside = bool(v.get("within"))
        items.append(f"<li class='{'ok' if inside else 'bad'}'>{_esc(MEASURE_LABELS.get(m, m))}"
                     f": error {_esc(_pct(v.get('error_after')))}, allowed "
                     f"{_esc(_pct(v.get('allowed')))}: "
                     f"<b>{'within' if inside else 'NOT within'}</b></li>")
    return head + (f"<ul>{''.join(items)}</ul>" if items else "")


def _header(result: Mapping[str, Any]) -> str:
    settings = result.get("settings", {})
    backend = result.get("backend", settings.get("backend", "?"))
    runs = (f"{settings.get('fit_runs', '?')} fitting, {settings.get('heldout_runs', '?')} "
            f"held-out and {settings.get('aa_runs', '?')} A/A rehearsals")
    levels = ", ".join(_num(x) for x in settings.get("levels", []))
    command = result.get("command")
    exps = result.get("experiments")
    lines = [
        f"<h1>Simulator calibration: {_esc(result.get('scenario', '?'))}</h1>",
        f"<p>The simulator fitted to the real ({_esc(backend)}) shadow at time compression "
        f"{_esc(_num(settings.get('time_compression')))} and sample fraction "
        f"{_esc(_num(settings.get('sample_fraction')))}: {_esc(runs)}"
        + (f", load sweep at {_esc(levels)} x the scenario's load" if levels else "")
        + ".</p>",
        f"<p>Command: <code>{_esc(command)}</code></p>" if command else "",
        _verdict_html(result.get("verdict", {})),
        (f"<p>Experiments on the real shadow: {_esc(exps.get('run', 0))} run now, "
         f"{_esc(exps.get('reused', 0))} reused from an earlier run.</p>") if exps else "",
    ]
    return "\n".join(x for x in lines if x)


# --------------------------------------------------------------------------- held-out


def _label(pair: Mapping[str, Any]) -> str:
    real = pair.get("real", {})
    return f"seed {pair.get('seed', real.get('seed', '?'))}\n{real.get('incident', '?')}"


def bars_figure(measure: str, pairs: Sequence[Mapping[str, Any]]) -> Any:
    """Real, simulated-before and simulated-after values of one measure per rehearsal."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(pairs) + 2.5), 3.6))
    x = np.arange(len(pairs))
    width = 0.27
    for k, (label, key, colour) in enumerate(SIM_SERIES):
        values = [float(p.get(key, {}).get(measure, math.nan)) for p in pairs]
        ax.bar(x + (k - 1) * width, values, width, label=label, color=colour)
    ax.set_xticks(x, [_label(p) for p in pairs], fontsize=8)
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.set_title(f"{MEASURE_LABELS.get(measure, measure)} per held-out rehearsal", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _heldout_section(result: Mapping[str, Any]) -> str:
    error = result.get("error", {})
    verdict = result.get("verdict", {}).get("measures", {})
    measures = error.get("measures", {})
    rows = [[MEASURE_LABELS.get(m, m), _num(e.get("real_mean")), _num(e.get("sim_before_mean")),
             _num(e.get("sim_after_mean")), _pct(e.get("error_before")),
             _pct(e.get("error_after")), _pct(e.get("aa_noise")),
             _pct(verdict.get(m, {}).get("allowed")),
             {True: "yes", False: "NO"}.get(verdict.get(m, {}).get("within"), "n/a")]
            for m, e in measures.items()]
    table = _table(["measure", "real mean", "sim before", "sim after", "error before",
                    "error after", "A/A noise", "allowed", "within"], rows) if rows else ""
    mae = error.get("step_mae_s", {})
    steps = (f"<p>Per-step mean absolute error: {_esc(_num(mae.get('before')))} s before, "
             f"{_esc(_num(mae.get('after')))} s after calibration.</p>") if mae else ""
    pairs = result.get("rehearsals", {}).get("heldout", [])
    figures = "".join(_figure(f"Held-out {MEASURE_LABELS.get(m, m)}", bars_figure(m, pairs))
                      for m in measures) if pairs else _note("No held-out rehearsal to plot.")
    intro = _note(f"Means over {error.get('runs', 0)} held-out rehearsals, never fitted on. "
                  "Error = |sim mean - real mean| / real mean.")
    return _section("Held-out error", intro, table or _note("No held-out error."), steps,
                    figures)


# --------------------------------------------------------------------------- load sweep


def _rows_of(rows: Sequence[Mapping[str, Any]], component: str) -> list[Mapping[str, Any]]:
    return sorted((r for r in rows if r.get("component") == component),
                  key=lambda r: float(r["load"]))


def _xy(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Loads and positive values of ``key`` (a log axis cannot show 0 ms)."""
    pts = [(float(r["load"]), float(r[key])) for r in rows if (r.get(key) or 0) > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def _sweep_panel(ax: Any, key: str, rows: Mapping[str, Sequence[Mapping[str, Any]]],
                 fitted: Sequence[float]) -> None:
    for name, style, colour in (("sim_before", "--", BEFORE), ("sim_after", "-", AFTER)):
        x, y = _xy(rows[name], key)
        ax.plot(x, y, style, color=colour, lw=1.6, marker=".")
    x, y = _xy(rows["real"], key)
    used = [lv in fitted for lv in x]
    ax.scatter([a for a, u in zip(x, used) if u], [b for b, u in zip(y, used) if u],
               color=REAL, s=36, zorder=3)
    ax.scatter([a for a, u in zip(x, used) if not u], [b for b, u in zip(y, used) if not u],
               facecolors="none", edgecolors=REAL, s=36, zorder=3)
    ax.set_yscale("log")
    _plain_ticks(ax, "y")
    ax.set_xlabel("load (x the scenario's)")
    ax.set_ylabel(f"{key.split('_')[0]} latency (ms)")
    ax.grid(alpha=0.3, which="both")


def sweep_figure(component: str, sweep: Mapping[str, Sequence[Mapping[str, Any]]],
                 fitted_levels: Sequence[float] | None) -> Any:
    """p50 and p99 of one component against load: real points (hollow where the level was
    overloaded, so not fitted), the simulator before (dashed) and after (solid).
    ``fitted_levels`` None: the component has no queueing fit (a cache)."""
    rows = {k: _rows_of(sweep.get(k, []), component) for k in ("real", "sim_before",
                                                                "sim_after")}
    fitted = fitted_levels is not None
    if fitted_levels is None:
        fitted_levels = [float(r["load"]) for r in rows["real"]]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.4))
    fig.subplots_adjust(wspace=0.32)
    for ax, key in zip(axes, ("p50_ms", "p99_ms")):
        _sweep_panel(ax, key, rows, fitted_levels)
    handles = [Line2D([], [], color=REAL, marker="o", lw=0,
                      label="real shadow (fitted)" if fitted else "real shadow"),
               Line2D([], [], color=BEFORE, ls="--", marker=".", label="simulator before"),
               Line2D([], [], color=AFTER, marker=".", label="simulator after")]
    if any(float(r["load"]) not in fitted_levels for r in rows["real"]):
        handles.insert(1, Line2D([], [], color=REAL, marker="o", mfc="none", lw=0,
                                 label="real shadow (overloaded: not fitted)"))
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                   frameon=False)
    fig.suptitle(f"{component}: latency against load" + ("" if fitted else " (not fitted)"),
                 x=0.06, ha="left", fontsize=11)
    return fig


def _interval(ci: Any, scale: float = 1.0) -> str:
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return "n/a"
    return f"{_num(float(ci[0]) * scale, 3)} - {_num(float(ci[1]) * scale, 3)}"


def _queueing_row(name: str, c: Mapping[str, Any]) -> list[Any]:
    sc, fit, ci = c.get("scenario", {}), c.get("fitted", {}), c.get("ci95", {})
    ms = 1000.0
    return [name, c.get("kind", "?"),
            _num(sc.get("latency_s", math.nan) * ms, 3),
            _num(fit.get("latency_s", math.nan) * ms, 3), _interval(ci.get("latency_s"), ms),
            _num(sc.get("concurrency")), _num(fit.get("concurrency")),
            _interval(ci.get("concurrency")),
            _num(c.get("rss_at_scenario")), _num(c.get("rss")), _num(c.get("points")),
            " ".join(f"{r:+.2f}" for r in c.get("residuals_log", []))]


def _sweep_section(result: Mapping[str, Any]) -> str:
    sweep = result.get("sweep", {})
    queueing = result.get("queueing", {})
    fitted_levels = [float(x) for x in queueing.get("levels", [])]
    comps = list(dict.fromkeys(r["component"] for r in sweep.get("real", [])))
    fits = queueing.get("components", {})
    figures = "".join(_figure(f"Load sweep: {c}", sweep_figure(
        c, sweep, fitted_levels if c in fits else None)) for c in comps)
    table = _table(["component", "kind", "latency scenario (ms)", "latency fitted (ms)",
                    "95 % interval (ms)", "concurrency scenario", "concurrency fitted",
                    "95 % interval", "RSS at scenario", "RSS fitted", "points",
                    "residuals (log p50, log p99 per level)"],
                   [_queueing_row(n, c) for n, c in fits.items()]) if fits else ""
    skipped = queueing.get("skipped")
    intro = _note("Each component's M/M/c service time (latency) and servers per replica "
                  "(concurrency), fitted by least squares on log p50 and log p99 over the "
                  f"healthy sweep levels ({', '.join(_num(x) for x in fitted_levels) or 'none'})."
                  " RSS is the residual sum of squares of those logs.")
    return _section("Load sweep and queueing fit", intro,
                    figures or _note("No load sweep was recorded."),
                    _note(f"Queueing fit skipped: {skipped}.") if skipped else "",
                    table or ("" if skipped else _note("No component was fitted.")))


# --------------------------------------------------------------------------- mechanics


def _comp(params: Mapping[str, Any], comp: str, field: str) -> float | None:
    value = params.get("components", {}).get(comp, {}).get(field)
    return None if value is None else float(value)


def _online(params: Mapping[str, Any], comp: str) -> float | None:
    off, factor = _comp(params, comp, "migration_duration"), _comp(params, comp, "online_factor")
    return None if off is None or factor is None else off * factor


def _top(field: str) -> Callable[[Mapping[str, Any], str], float | None]:
    def get(params: Mapping[str, Any], _comp_name: str) -> float | None:
        value = params.get(field)
        return None if value is None else float(value)
    return get


# which simulator parameter each timed distribution (``kind`` or step action) sets
_PARAM_OF: dict[str, Callable[[Mapping[str, Any], str], float | None]] = {
    "startup": lambda p, c: _comp(p, c, "startup"),
    "stop": _top("stop_s"),
    "migration_offline": lambda p, c: _comp(p, c, "migration_duration"),
    "migration_online": _online,
    "disable_flag": _top("flag_toggle_s"),
    "flush_cache": _top("action_s"),
}


def fitted_marks(key: str, applied: Mapping[str, Any], params: Mapping[str, Any]
                 ) -> list[tuple[str, float]]:
    """The values the simulator takes for a timed distribution (``startup:web``) or step
    action: the mechanics fit's and, where the rehearsal fit moved it, the final one."""
    kind, _, comp = key.partition(":")
    get = _PARAM_OF.get(kind)
    if get is None:
        return []
    marks: list[tuple[str, float]] = []
    mech, final = get(applied, comp), get(params, comp)
    if mech is not None:
        marks.append(("mechanics fit", mech))
    if final is not None and (mech is None or abs(final - mech) > 0.005 * abs(mech)):
        marks.append(("final (after rehearsal fit)", final))
    return marks


def _strip_row(ax: Any, i: int, stats: Mapping[str, Any],
               marks: Sequence[tuple[str, float]], rng: np.random.Generator) -> None:
    values = [float(v) for v in stats.get("values", [])]
    ax.plot([stats.get("p10", math.nan), stats.get("p90", math.nan)], [i, i], color="#9e9e9e",
            lw=5, alpha=0.5, solid_capstyle="butt")
    ax.scatter(values, i + rng.uniform(-0.18, 0.18, len(values)), color=REAL, s=16, zorder=3)
    ax.plot([stats.get("mean", math.nan)] * 2, [i - 0.3, i + 0.3], color="#616161", lw=1.5)
    for label, value in marks:
        colour = MECHANICS if label == "mechanics fit" else AFTER
        ax.plot([value, value], [i - 0.38, i + 0.38], color=colour, lw=2.4, zorder=4)


def strip_figure(title: str, dists: Mapping[str, Mapping[str, Any]],
                 marks: Mapping[str, Sequence[tuple[str, float]]]) -> Any:
    """Every measured value of each distribution (one row each, jittered), its p10-p90
    band and mean, and the simulator's fitted values as coloured ticks."""
    names = list(dists)
    fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.5 * len(names)))
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        _strip_row(ax, i, dists[name], marks.get(name, []), rng)
    values = [float(v) for d in dists.values() for v in d.get("values", [])]
    values += [v for ms in marks.values() for _, v in ms]
    _time_scale(ax, values)
    _plain_ticks(ax, "x")
    ax.set_yticks(range(len(names)),
                  [f"{n} (n={dists[n].get('n', 0)})" for n in names], fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("seconds (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x", which="both")
    labels = {label for ms in marks.values() for label, _ in ms}
    handles = [Line2D([], [], color=REAL, marker="o", lw=0, ms=4, label="measured"),
               Line2D([], [], color="#9e9e9e", lw=5, alpha=0.5, label="p10 - p90"),
               Line2D([], [], color="#616161", lw=1.5, label="measured mean")]
    handles += [Line2D([], [], color=MECHANICS if label == "mechanics fit" else AFTER, lw=2.4,
                       label=f"simulator: {label}")
                for label in ("mechanics fit", "final (after rehearsal fit)") if label in labels]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    return fig


def _stats_rows(dists: Mapping[str, Mapping[str, Any]],
                marks: Mapping[str, Sequence[tuple[str, float]]]) -> list[list[Any]]:
    return [[name, s.get("n", 0), _num(s.get("mean")), _num(s.get("sd")), _num(s.get("p10")),
             _num(s.get("p50")), _num(s.get("p90")), _num(s.get("log_sd")),
             "; ".join(f"{label}: {_num(v)}" for label, v in marks.get(name, [])) or "-"]
            for name, s in dists.items()]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _mechanics_section(result: Mapping[str, Any]) -> str:
    mech = result.get("mechanics", {})
    applied, params = mech.get("applied", {}), result.get("params", {})
    parts = [_note("Durations the real shadow timed (replica startups and stops, migrations) "
                   "and the durations of its rollback steps, with the values the simulator "
                   "takes for them.")]
    headers = ["distribution", "n", "mean s", "sd s", "p10 s", "p50 s", "p90 s", "log sd",
               "simulator value s"]
    for title, key in (("Timed by the real shadow", "timings"), ("Step durations", "steps")):
        dists = {k: v for k, v in mech.get(key, {}).items() if v.get("n")}
        if not dists:
            parts.append(_note(f"{title}: none recorded."))
            continue
        marks = {k: fitted_marks(k, applied, params) for k in dists}
        parts += [f"<h3>{_esc(title)}</h3>", _figure(title, strip_figure(title, dists, marks)),
                  _table(headers, _stats_rows(dists, marks))]
    flat = _flatten(applied)
    parts += ["<h3>Applied by the mechanics fit</h3>",
              _table(["parameter", "value"], [[k, _num(v)] for k, v in flat]) if flat
              else _note("No parameter was set from the mechanics.")]
    return _section("Mechanics", *parts)


# --------------------------------------------------------------------------- rehearsal fit


def _step_points(pairs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float],
                                                                          list[float]]:
    """(real, simulated) durations of every step that ran on both sides."""
    xs: list[float] = []
    ys: list[float] = []
    for p in pairs:
        real, sim = p.get("real", {}).get("steps", {}), p.get(key, {}).get("steps", {})
        for step, secs in real.items():
            if step in sim:
                xs.append(float(secs))
                ys.append(float(sim[step]))
    return xs, ys


def steps_scatter(pairs: Sequence[Mapping[str, Any]]) -> Any:
    """Real against simulated step durations, before and after calibration; on the
    diagonal the simulator is right."""
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    every: list[float] = []
    for label, key, colour, marker in (("simulator before", "sim_before", BEFORE, "x"),
                                       ("simulator after", "sim_after", AFTER, "o")):
        xs, ys = _step_points(pairs, key)
        every += xs + ys
        ax.scatter(xs, ys, color=colour, marker=marker, s=28, alpha=0.8,
                   label=f"{label} ({len(xs)} steps)")
    lo = min([v for v in every if v > 0], default=0.1) / 1.5
    hi = max(every, default=1.0) * 1.5
    ax.plot([0 if min(every, default=1) <= 0 else lo, hi],
            [0 if min(every, default=1) <= 0 else lo, hi], color="#757575", lw=1, ls=":",
            label="y = x")
    _time_scale(ax, every, "x")
    _time_scale(ax, every, "y")
    ax.set_xlabel("real shadow: step duration (s)")
    ax.set_ylabel("simulator: step duration (s)")
    ax.set_aspect("equal", adjustable="datalim")
    _plain_ticks(ax, "x")
    _plain_ticks(ax, "y")
    ax.set_title("Step durations: real shadow against simulator", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _rehearsal_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for group in ("fit", "heldout"):
        for p in result.get("rehearsals", {}).get(group, []):
            r, b, a = (p.get(k, {}) for k in ("real", "sim_before", "sim_after"))
            rows.append([group, p.get("seed", "?"), r.get("incident", "?"),
                         " / ".join(str(x.get("outcome", "-")) for x in (r, b, a)),
                         " / ".join(_num(x.get("downtime_s")) for x in (r, b, a)),
                         " / ".join(_num(x.get("bad_requests")) for x in (r, b, a))])
    return rows


def _rehearsal_fit_section(result: Mapping[str, Any]) -> str:
    fit = result.get("rehearsal_fit", {})
    if "skipped" in fit or not fit:
        summary = _note(f"Rehearsal fit skipped: {fit.get('skipped', 'not run')}.")
    else:
        summary = (f"<p>Rehearsal error over the fitting rehearsals (per rehearsal, the sum "
                   f"of the squared relative errors of downtime, bad requests and the mean "
                   f"over its steps; averaged): {_esc(_num(fit.get('error_before')))} before "
                   f"the search, {_esc(_num(fit.get('error_after')))} after, over "
                   f"{len(fit.get('trials', []))} trials of the knobs below.</p>"
                   + _table(["knob", "chosen"],
                            [[k, _num(v)] for k, v in fit.get("chosen", {}).items()]))
    reh = result.get("rehearsals", {})
    pairs = [*reh.get("fit", []), *reh.get("heldout", [])]
    scatter = (_figure("Step durations: real against simulated", steps_scatter(pairs),
                       "Every step of every fitting and held-out rehearsal.")
               if any(_step_points(pairs, "sim_before")[0]) or any(
                   _step_points(pairs, "sim_after")[0]) else _note("No step to compare."))
    rows = _rehearsal_rows(result)
    table = _table(["set", "seed", "incident", "outcome real / before / after",
                    "downtime s real / before / after", "bad requests real / before / after"],
                   rows) if rows else _note("No rehearsal was compared.")
    return _section("Rehearsal fit", summary, scatter, table)


# --------------------------------------------------------------------------- A/A


def _change(a: Any, b: Any) -> str:
    if _missing(a) or _missing(b) or not isinstance(a, int | float) or not isinstance(
            b, int | float):
        return "-"
    return "0.0 %" if a == b else ("n/a" if a == 0 else f"{(b - a) / abs(a) * 100:+.1f} %")


def _aa_table(item: Mapping[str, Any]) -> str:
    orig, rep = item.get("original", {}), item.get("repeat", {})
    rows: list[list[Any]] = [["outcome", orig.get("outcome", "-"), rep.get("outcome", "-"),
                              "-"]]
    for key in ("downtime_s", "bad_requests", "rollback_s"):
        rows.append([key, _num(orig.get(key)), _num(rep.get(key)),
                     _change(orig.get(key), rep.get(key))])
    steps_o, steps_r = orig.get("steps", {}), rep.get("steps", {})
    for step in dict.fromkeys([*steps_o, *steps_r]):
        rows.append([f"step {step} (s)", _num(steps_o.get(step)), _num(steps_r.get(step)),
                     _change(steps_o.get(step), steps_r.get(step))])
    title = (f"{item.get('name', '?')}: seed {orig.get('seed', '?')}, incident "
             f"{orig.get('incident', '?')}")
    return f"<h3>{_esc(title)}</h3>" + _table(["", "original", "repeat", "change"], rows)


def _aa_section(result: Mapping[str, Any]) -> str:
    items = result.get("rehearsals", {}).get("aa", [])
    intro = _note("Held-out rehearsals run twice on the real shadow: how much the real "
                  "shadow differs from itself (the A/A noise) bounds how close the simulator "
                  "can be asked to get.")
    body = "".join(_aa_table(i) for i in items) if items else _note("No A/A rehearsal was run.")
    return _section("A/A", intro, body)


# --------------------------------------------------------------------------- page


def _params_section(result: Mapping[str, Any]) -> str:
    params = result.get("params")
    if not params:
        return _section("Fitted parameters", _note("Every parameter kept its default."))
    text = yaml.safe_dump(params, sort_keys=False)
    return _section("Fitted parameters",
                    _note("As written to params.yaml (only the values that differ from the "
                          "simulator's defaults)."), f"<pre>{_esc(text)}</pre>")


def render_report(result: Mapping[str, Any]) -> str:
    """The report page for a calibration ``result`` (report.json's content)."""
    sections = [_header(result), _heldout_section(result), _sweep_section(result),
                _mechanics_section(result), _rehearsal_fit_section(result),
                _aa_section(result), _params_section(result)]
    body = "\n".join(sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>shadowrl calibration report: {_esc(result.get('scenario', '?'))}</title>
<style>
{_CSS}
</style></head><body>
{body}
</body></html>
"""


def write_report(path: Path, result: dict[str, Any]) -> Path:
    """Write ``report.html`` for a calibration ``result`` (report.json's content),
    atomically: a reader never sees half a page."""
    return atomic_write_text(path, render_report(result))
