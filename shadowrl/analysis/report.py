"""Self-contained HTML report of a set of rehearsals, with matplotlib plots inlined as PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from shadowrl.analysis.profile import attribution  # noqa: E402
from shadowrl.analysis.summary import RehearsalSummary  # noqa: E402
from shadowrl.core.atomic import atomic_write_text  # noqa: E402
from shadowrl.core.results import StepResult  # noqa: E402
from shadowrl.core.spec import Rule, Scenario  # noqa: E402
from shadowrl.rehearsal.runner import Rehearsal  # noqa: E402

OUTCOME_COLOURS = {"recovered": "#2e7d32", "rollback_failed": "#c62828",
                   "rollback_ineffective": "#ef6c00"}
# Step colours avoid red and green, which mark the breach, the SLO thresholds and the end
# of verification; consecutive steps always differ.
STEP_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#bcbd22", "#8c564b", "#e377c2",
                "#7f7f7f")
SERIES = "#0d47a1"
BREACH = "#c62828"
ONSET = "#6d4c41"
VERIFIED = "#2e7d32"

# Timeline layout, in inches: the panels share one width so step labels can be placed by
# measuring them; the legends sit in a column to the right of the panels.
_FIG_W = 11.5
_LEFT = 0.85
_AX_W = 7.6
_PANEL_H = 1.9
_GAP = 0.22
_LANE_H = 0.22  # one row of step labels (9 pt) in the step strip
_TOP = 0.45  # the title
_BOTTOM = 0.55  # the x axis label
_LABEL_FONT = 9
_LABEL_PAD_IN = 0.1  # the least space between two step labels in one row


class Example(NamedTuple):
    """A run shown as an example timeline, with what it exemplifies (``worst run``...)."""

    label: str
    run: Rehearsal


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _darker(colour: str) -> tuple[float, float, float]:
    """The colour at 65 %: pale step colours (olive, cyan) stay legible as text on white."""
    r, g, b = to_rgb(colour)
    return (r * 0.65, g * 0.65, b * 0.65)


def _bound(rule: Rule) -> float:
    """The rule's threshold (a rule has exactly one of ``above`` and ``below``)."""
    bound = rule.above if rule.above is not None else rule.below
    assert bound is not None  # spec.Rule validates it
    return float(bound)


def _rule_text(rule: Rule) -> str:
    """``SLO edge-errors: > 1%``: what the threshold line means, in the panel's unit."""
    bound = _bound(rule)
    op = ">" if rule.above is not None else "<"
    if rule.metric == "error_rate":
        value = f"{bound * 100:g}%"
    elif rule.metric.endswith("_ms"):
        value = f"{bound:g} ms"
    else:
        value = f"{bound:g}"
    return f"SLO {rule.name}: {op} {value}"


def _axis_top(values: np.ndarray, bounds: Sequence[float], least: float) -> float:
    """The upper y limit: the data and every threshold with headroom, at least ``least``
    (a flat zero series still gets a readable 0-based axis)."""
    top = max([float(values.max()) if values.size else 0.0, *bounds, least])
    return top * 1.15


def _step_lanes(widths: Sequence[float], centres: Sequence[float], lo: float,
                hi: float, pad: float) -> tuple[list[float], list[int]]:
    """Each label's centre (kept inside ``[lo, hi]``) and row: the lowest row where it
    does not touch the labels already placed there (labels in time order)."""
    ends: list[float] = []  # per row, where its last label ends
    xs: list[float] = []
    rows: list[int] = []
    for w, c in zip(widths, centres):
        x = min(max(c, lo + w / 2), hi - w / 2)
        left = x - w / 2
        row = next((k for k, end in enumerate(ends) if left >= end + pad), len(ends))
        if row == len(ends):
            ends.append(x + w / 2)
        else:
            ends[row] = x + w / 2
        xs.append(x)
        rows.append(row)
    return xs, rows


def _legend_beside(ax: Any, handles: Sequence[Any], title: str, ncol: int = 1) -> None:
    """A legend in the column right of the panels, where it hides no data."""
    ax.legend(handles=list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, title=title, title_fontsize=8, alignment="left", frameon=False,
              ncol=ncol)


def _step_strip(fig: Any, ax: Any, steps: Sequence[StepResult], colours: Sequence[str],
                lo: float, hi: float) -> int:
    """Name every step above its bar, in as many rows as the labels need not to overlap
    (short steps sit side by side); returns the number of rows."""
    per_inch = (hi - lo) / _AX_W
    texts = [ax.text(0, 0, s.name, fontsize=_LABEL_FONT, color=_darker(c), ha="center",
                     va="center", fontweight="bold") for s, c in zip(steps, colours)]
    renderer = fig.canvas.get_renderer()
    widths = [tx.get_window_extent(renderer).width / fig.dpi * per_inch for tx in texts]
    xs, rows = _step_lanes(widths, [(s.start_s + s.end_s) / 2 for s in steps], lo, hi,
                           _LABEL_PAD_IN * per_inch)
    lanes = max(rows, default=0) + 1
    for tx, x, row in zip(texts, xs, rows):
        tx.set_position((x, 1.5 + row))
    least = 0.004 * (hi - lo)  # a 1 s step still shows in the strip
    for s, c in zip(steps, colours):
        ax.barh(0.5, max(s.end_s - s.start_s, least), left=s.start_s, height=0.7, color=c,
                alpha=0.7, lw=0)
    ax.set_ylim(0, lanes + 1)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="x", labelbottom=False)
    ax.set_ylabel("steps", rotation=0, ha="right", va="center")
    bands = [Patch(color=c, alpha=0.7, lw=0, label=f"{s.name}  {s.end_s - s.start_s:.0f} s"
                   + ("" if s.status == "ok" else f" ({s.status})"))
             for s, c in zip(steps, colours)]
    _legend_beside(ax, bands or [Patch(color="none", label="(no step ran)")],
                   "step bands (duration)", 1 if len(bands) <= 12 else 2)
    return lanes


def _edge_panel(ax: Any, scenario: Scenario, t: np.ndarray, values: np.ndarray, key: str,
                least_top: float) -> None:
    """One edge series from 0 up, with the edge SLO rules on it labelled in its unit."""
    ax.plot(t, values, color=SERIES, lw=1.3)
    rules = [rule for rule in scenario.slo.rules if rule.scope == "edge" and rule.metric == key]
    for rule in rules:
        ax.axhline(_bound(rule), color=BREACH, ls=":", lw=1.2)
        ax.annotate(_rule_text(rule), xy=(1.0, _bound(rule)),
                    xycoords=ax.get_yaxis_transform(), xytext=(-4, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8,
                    color=BREACH, bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                        "ec": "none", "alpha": 0.85})
    ax.set_ylim(0.0, _axis_top(values, [_bound(rule) for rule in rules], least_top))


def _cpu_panel(ax: Any, comps: np.ndarray, t: np.ndarray, cpu: np.ndarray) -> None:
    """CPU of the components that record it; the others (caches never queue, so the
    simulator gives them none) are named in the legend instead of drawn as a zero line."""
    no_cpu = []
    for name in dict.fromkeys(comps.tolist()):
        if name == "edge":
            continue
        sel = comps == name
        if not np.any(cpu[sel] > 0):
            no_cpu.append(str(name))
            continue
        ax.plot(t[sel], cpu[sel], lw=1.1, label=name)
    ax.set_ylim(0.0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("CPU utilisation")
    ax.set_xlabel("shadow time (s)")
    title = "components" + (f"\n(no CPU metric: {', '.join(no_cpu)})" if no_cpu else "")
    handles, _ = ax.get_legend_handles_labels()
    _legend_beside(ax, handles or [Line2D([], [], lw=0, label="(none recorded)")], title)


def _rps_panel(ax: Any, comps: np.ndarray, t: np.ndarray, rps: np.ndarray) -> None:
    """Requests per second at the edge and at each component: where the load went (a
    cold cache sends its misses to the datastore; the real shadow's are measured)."""
    for name in dict.fromkeys(comps.tolist()):
        sel = comps == name
        if name == "edge":
            ax.plot(t[sel], rps[sel], lw=1.3, color=SERIES, label="edge")
        elif np.any(rps[sel] > 0):
            ax.plot(t[sel], rps[sel], lw=1.0, label=str(name))
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("requests/s")
    handles, _ = ax.get_legend_handles_labels()
    _legend_beside(ax, handles or [Line2D([], [], lw=0, label="(none recorded)")], "load")


def timeline_figure(scenario: Scenario, r: Rehearsal, label: str = "run") -> Any:
    """Edge error rate, edge p99, requests/s and per-component CPU over one run, with the
    procedure's steps as named bands, so a reader sees what each step did to the SLO.

    ``label`` says what the run exemplifies (``worst run``); the figure's axes are, in
    order, error rate, p99 latency, requests/s, CPU and the step strip drawn above them."""
    p = r.profile or {}
    comps = np.asarray(p.get("component", []), dtype=object)
    t = np.asarray(p.get("t", []), dtype=float)
    steps = sorted((s for s in r.steps if s.status != "skipped"), key=lambda s: s.start_s)
    colours = [STEP_COLOURS[k % len(STEP_COLOURS)] for k in range(len(steps))]
    x0 = min(float(t.min()), 0.0) if t.size else 0.0
    x1 = max([float(t.max()) if t.size else 0.0, r.verify_end_s, *(s.end_s for s in steps)])
    margin = (x1 - x0) * 0.01 or 1.0
    lo, hi = x0 - margin, x1 + margin

    fig = plt.figure(figsize=(_FIG_W, 8.0))
    ax_err = fig.add_axes((0, 0, 1, 1))
    panels = (ax_err, fig.add_axes((0, 0, 1, 1), sharex=ax_err),
              fig.add_axes((0, 0, 1, 1), sharex=ax_err),
              fig.add_axes((0, 0, 1, 1), sharex=ax_err))
    ax_steps = fig.add_axes((0, 0, 1, 1), sharex=ax_err)
    ax_p99, ax_rps, ax_cpu = panels[1:]
    lanes = _step_strip(fig, ax_steps, steps, colours, lo, hi)

    # layout, top to bottom: title, step strip (as tall as its rows), the panels, x label
    strip_h = (lanes + 1) * _LANE_H
    height = _TOP + strip_h + len(panels) * (_GAP + _PANEL_H) + _BOTTOM
    fig.set_size_inches(_FIG_W, height)
    y = height - _TOP - strip_h
    ax_steps.set_position((_LEFT / _FIG_W, y / height, _AX_W / _FIG_W, strip_h / height))
    for ax in panels:
        y -= _GAP + _PANEL_H
        ax.set_position((_LEFT / _FIG_W, y / height, _AX_W / _FIG_W, _PANEL_H / height))
    ax_err.set_xlim(lo, hi)

    edge = comps == "edge"
    for ax, key, least_top in ((ax_err, "error_rate", 0.01), (ax_p99, "latency_p99_ms", 100.0)):
        _edge_panel(ax, scenario, t[edge], np.asarray(p.get(key, []), dtype=float)[edge], key,
                    least_top)
    ax_err.set_ylabel("edge error rate")
    ax_err.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_p99.set_ylabel("edge p99 latency (ms)")
    _rps_panel(ax_rps, comps, t, np.asarray(p.get("rps", []), dtype=float))
    _cpu_panel(ax_cpu, comps, t, np.asarray(p.get("cpu", []), dtype=float))

    for ax in panels:
        for s, c in zip(steps, colours):
            ax.axvspan(s.start_s, s.end_s, color=c, alpha=0.15, lw=0)
        ax.axvline(r.injection.onset_s, color=ONSET, lw=1.2, ls="--")
        ax.axvline(r.breach.at_s, color=BREACH, lw=1.6)
        ax.axvline(r.verify_end_s, color=VERIFIED, lw=1.2, ls="--")
        ax.grid(alpha=0.3)
    for ax in (ax_err, ax_p99, ax_rps):
        ax.tick_params(axis="x", labelbottom=False)
    _legend_beside(ax_p99, [
        Line2D([], [], color=ONSET, lw=1.2, ls="--", label="incident onset"),
        Line2D([], [], color=BREACH, lw=1.6, label="SLO breach: rollback starts"),
        Line2D([], [], color=VERIFIED, lw=1.2, ls="--", label="verification end"),
        Line2D([], [], color=BREACH, lw=1.2, ls=":", label="SLO threshold"),
        Line2D([], [], color=SERIES, lw=1.3, label="edge (what users see)")], "lines")
    fig.suptitle(f"{label} (seed {r.seed}): incident '{r.incident}' -> {r.outcome}, "
                 f"downtime {r.downtime_s:.0f} s", x=_LEFT / _FIG_W, ha="left",
                 y=1 - 0.12 / height, va="top", fontsize=11)
    return fig


def downtime_figure(runs: Sequence[Rehearsal], budget: float | None) -> Any:
    """How many runs had how much downtime, by outcome, against the budget."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    data = [[r.downtime_s for r in runs if r.outcome == o] for o in OUTCOME_COLOURS]
    bins = np.linspace(0, max([r.downtime_s for r in runs] + [1.0]) * 1.05, 25)
    ax.hist(data, bins=bins, stacked=True, color=list(OUTCOME_COLOURS.values()),
            label=list(OUTCOME_COLOURS))
    if budget is not None:
        ax.axvline(budget, color="black", ls=":", label=f"downtime budget ({budget:g} s)")
    ax.set_xlabel("downtime per run (s)")
    ax.set_ylabel("runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def steps_figure(runs: Sequence[Rehearsal]) -> Any:
    """Each step's mean duration next to the downtime that happens while it runs (scalar
    fields only: no profile needed)."""
    totals: dict[str, list[float]] = {}
    for r in runs:
        for row in attribution(r):
            entry = totals.setdefault(row["step"], [0.0, 0.0, 0.0])
            entry[0] += row["duration_s"]
            entry[1] += row["downtime_s"]
            entry[2] += 1
    names = list(totals)
    mean_dur = [totals[n][0] / max(totals[n][2], 1) for n in names]
    mean_down = [totals[n][1] / max(totals[n][2], 1) for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(names))
    ax.bar(x - 0.2, mean_dur, 0.4, label="mean duration", color="#90caf9")
    ax.bar(x + 0.2, mean_down, 0.4, label="mean downtime while it runs", color="#ef9a9a")
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("seconds per run")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pick_examples(runs: Sequence[Rehearsal]) -> list[Example]:
    """The worst, the median and the best run by downtime, each once, labelled.

    Chosen from scalar fields only, so a caller can pick the runs before it has their
    profiles (and keep only theirs); the report draws the picks that carry a profile."""
    ranked = sorted(runs, key=lambda r: r.downtime_s)  # stable: ties keep the run order
    if len(ranked) == 1:
        return [Example("only run", ranked[0])]
    picks = [("worst run", ranked[-1]), ("median run", ranked[len(ranked) // 2]),
             ("best run", ranked[0])] if ranked else []
    out: list[Example] = []
    for label, r in picks:
        if all(e.run is not r for e in out):
            out.append(Example(label, r))
    return out


_HOW_TO_READ = """<h2>How to read this report</h2>
<ul>
<li><b>Downtime</b> is the time from the breach to the end of verification during which any
SLO rule's condition was violated; <b>failed requests</b> integrate rps x edge error rate over
the same span. <b>Error budget burn</b> is the share of the SLO objective's error budget (the
bad requests the target allows in its window, e.g. 0.1 % of 30 days of traffic) that the
incident and the rollback used over that span; a request is bad when it fails or is slower
than the objective's latency threshold. <b>Full outage</b> counts the seconds in which the edge
error rate was 99 % or more.</li>
<li><b>Timelines</b> show the worst, the median and the best run by downtime. The strip on
top names the procedure's steps; the same colours shade the panels below while each step
runs. The legends on the right name the step bands (with each step's duration) and the
vertical lines (incident onset, the breach that starts the rollback, the end of
verification). The panels: the edge error rate and p99 (with the SLO thresholds), requests/s
at the edge and at each component, and CPU per component (on the real shadow: cores per
container, measured). Components without a CPU metric (caches) are listed, not drawn.</li>
<li><b>Per-step bars</b> show how long each step takes and how much downtime happens while
it runs; <code>verify</code> is the time after the last step until the SLO held.</li>
<li><b>Alerts</b>: <code>rollback_failed</code> (a step failed), <code>rollback_ineffective</code>
(SLO not restored by the timeout), <code>too_slow</code> (downtime over budget, or steps
still running after the SLO was restored made the run overrun its timeout),
<code>new_errors</code> (errors the rollback itself caused). The <i>alerts</i> column counts
alerts (a run raises one per error source, so it can exceed the runs); <i>runs</i> counts
the runs that raised at least one.</li>
</ul>
"""


def render_report(scenario: Scenario, summary: RehearsalSummary, runs: Sequence[Rehearsal],
                  command: str = "") -> str:
    """The report page. Only the runs :func:`pick_examples` picks need a profile (for
    their timelines); every other figure and table uses the runs' scalar fields."""
    images = [("Downtime distribution", _png(downtime_figure(
        runs, scenario.procedure.budget.downtime))),
        ("Per-step duration and downtime", _png(steps_figure(runs)))]
    examples = pick_examples(runs)
    for label, r in examples:
        if r.profile:
            images.append((f"Timeline: {label} (seed {r.seed})",
                           _png(timeline_figure(scenario, r, label))))
    d = summary.downtime_s
    f = summary.failed_requests
    b = summary.budget_burn
    outcomes = summary.outcomes.model_dump()
    overview = _table(["runs", *outcomes, "downtime mean/p50/p95/max (s)",
                       "failed requests mean/p95",
                       "error budget burn mean/p50/p95/max", "full outage mean/max (s)"],
                      [[summary.runs, *outcomes.values(),
                        f"{d.mean:.0f} / {d.p50:.0f} / {d.p95:.0f} / {d.max:.0f}",
                        f"{f.mean:.0f} / {f.p95:.0f}",
                        f"{b.mean:.2%} / {b.p50:.2%} / {b.p95:.2%} / {b.max:.2%}",
                        f"{summary.outage_s.mean:.0f} / {summary.outage_s.max:.0f}"]])
    alerts = _table(["kind", "step", "alerts", "runs", "example"],
                    [[a.kind, a.step or "-", a.count, f"{a.runs}\u00a0of\u00a0{summary.runs}",
                      a.example] for a in summary.alerts]
                    ) if summary.alerts else "<p>No alerts.</p>"
    steps = _table(["step", "mean s", "p95 s", "share of downtime"],
                   [[s.name, f"{s.mean_s:.1f}", f"{s.p95_s:.1f}", f"{s.downtime_share:.0%}"]
                    for s in summary.steps])
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                      f"src='data:image/png;base64,{png}'>" for title, png in images)
    if examples and not any(r.profile for _, r in examples):
        figures += ("<p>No per-second profile was recorded for the worst, median and best "
                    "runs, so the report has no example timelines.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>shadowrl rehearsal report: {html.escape(scenario.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; text-align: left; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} code {{ background: #f3f3f3; }}
</style></head><body>
<h1>Rollback rehearsal: {html.escape(scenario.name)}</h1>
<p>{html.escape(scenario.metadata.description.rstrip("."))}. Procedure
<code>{html.escape(scenario.procedure.name)}</code>, policy
<code>{html.escape(summary.policy)}</code>, on the
{"real (Docker) shadow" if summary.backend == "docker" else "simulated shadow"}.
{f'Command: <code>{html.escape(command)}</code>' if command else ''}</p>
<h2>Overview</h2>{overview}
<h2>Alerts</h2>{alerts}
<h2>Steps</h2>{steps}
{_HOW_TO_READ}
{figures}
</body></html>
"""


def write_report(path: str | Path, scenario: Scenario, summary: RehearsalSummary,
                 runs: Sequence[Rehearsal], command: str = "") -> Path:
    """Write :func:`render_report` atomically: a reader never sees half a page."""
    return atomic_write_text(path, render_report(scenario, summary, runs, command))
