"""Self-contained HTML report of a set of rehearsals, with matplotlib plots inlined as PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shadowrl.analysis.profile import attribution  # noqa: E402
from shadowrl.analysis.summary import RehearsalSummary  # noqa: E402
from shadowrl.core.atomic import atomic_write_text  # noqa: E402
from shadowrl.core.spec import Scenario  # noqa: E402
from shadowrl.rehearsal.runner import Rehearsal  # noqa: E402

OUTCOME_COLOURS = {"recovered": "#2e7d32", "rollback_failed": "#c62828",
                   "rollback_ineffective": "#ef6c00"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def timeline_figure(scenario: Scenario, r: Rehearsal) -> Any:
    """Edge error rate, edge p99 and per-component utilisation over time, steps shaded."""
    p = r.profile or {}
    comps = np.asarray(p.get("component", []), dtype=object)
    t = np.asarray(p.get("t", []), dtype=float)
    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    edge = comps == "edge"
    series = [("edge error rate", "error_rate", axes[0]),
              ("edge p99 latency (ms)", "latency_p99_ms", axes[1])]
    for label, key, ax in series:
        values = np.asarray(p.get(key, []), dtype=float)
        ax.plot(t[edge], values[edge], color="#1565c0", lw=1.2)
        ax.set_ylabel(label)
        for rule in scenario.slo.rules:
            if rule.scope == "edge" and rule.metric == key:
                bound = rule.above if rule.above is not None else rule.below
                ax.axhline(bound, color="#c62828", ls=":", lw=1)
                ax.text(t[0] if len(t) else 0, bound, f" {rule.name}", color="#c62828",
                        va="bottom", fontsize=8)
    cpu = np.asarray(p.get("cpu", []), dtype=float)
    for name in dict.fromkeys(comps.tolist()):
        if name == "edge":
            continue
        sel = comps == name
        axes[2].plot(t[sel], cpu[sel], lw=1, label=name)
    axes[2].set_ylabel("utilisation (cpu)")
    axes[2].legend(fontsize=8, ncol=4, loc="upper left")
    cmap = plt.get_cmap("tab10")
    for k, s in enumerate(x for x in r.steps if x.status != "skipped"):
        for ax in axes:
            ax.axvspan(s.start_s, s.end_s, color=cmap(k % 10), alpha=0.13, lw=0)
        axes[0].text((s.start_s + s.end_s) / 2, 1.0, s.name, rotation=90, fontsize=7,
                     va="top", ha="center", transform=axes[0].get_xaxis_transform())
    for ax in axes:
        ax.axvline(r.breach.at_s, color="#c62828", lw=1.5)
        ax.axvline(r.injection.onset_s, color="#6d4c41", lw=1, ls="--")
        ax.axvline(r.verify_end_s, color="#2e7d32", lw=1, ls="--")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"run seed {r.seed}: incident '{r.incident}' -> {r.outcome}, downtime "
                      f"{r.downtime_s:.0f}s (red line: breach, brown dashed: onset, green "
                      f"dashed: verification end)", fontsize=9)
    axes[2].set_xlabel("shadow time (s)")
    return fig


def downtime_figure(runs: Sequence[Rehearsal], budget: float | None) -> Any:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    data = [[r.downtime_s for r in runs if r.outcome == o] for o in OUTCOME_COLOURS]
    bins = np.linspace(0, max([r.downtime_s for r in runs] + [1.0]) * 1.05, 25)
    ax.hist(data, bins=bins, stacked=True, color=list(OUTCOME_COLOURS.values()),
            label=list(OUTCOME_COLOURS))
    if budget is not None:
        ax.axvline(budget, color="black", ls=":", label="downtime budget")
    ax.set_xlabel("downtime per run (s)")
    ax.set_ylabel("runs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def steps_figure(runs: Sequence[Rehearsal]) -> Any:
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
    ax.bar(x - 0.2, mean_dur, 0.4, label="mean duration (s)", color="#90caf9")
    ax.bar(x + 0.2, mean_down, 0.4, label="mean downtime caused (s)", color="#ef9a9a")
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pick_examples(runs: Sequence[Rehearsal]) -> list[Rehearsal]:
    """The worst run, the median run and the best run that have profiles."""
    profiled = sorted((r for r in runs if r.profile), key=lambda r: r.downtime_s)
    if not profiled:
        return []
    picks = [profiled[-1], profiled[len(profiled) // 2], profiled[0]]
    seen: set[int] = set()
    return [r for r in picks if not (id(r) in seen or seen.add(id(r)))]  # type: ignore[func-returns-value]


def render_report(scenario: Scenario, summary: RehearsalSummary, runs: Sequence[Rehearsal],
                  command: str = "") -> str:
    images = [("Downtime distribution", _png(downtime_figure(
        runs, scenario.procedure.budget.downtime))),
        ("Per-step duration and downtime", _png(steps_figure(runs)))]
    for r in pick_examples(runs):
        images.append((f"Timeline: seed {r.seed} ({r.incident}, {r.outcome})",
                       _png(timeline_figure(scenario, r))))
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
    alerts = _table(["kind", "step", "runs", "example"],
                    [[a.kind, a.step or "-", a.count, a.message]
                     for a in summary.alerts]) if summary.alerts else "<p>No alerts.</p>"
    steps = _table(["step", "mean s", "p95 s", "share of downtime"],
                   [[s.name, s.mean_s, s.p95_s, f"{s.downtime_share:.0%}"]
                    for s in summary.steps])
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                      f"src='data:image/png;base64,{png}'>" for title, png in images)
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
<p>{html.escape(scenario.metadata.description)}. Procedure
<code>{html.escape(scenario.procedure.name)}</code>, policy
<code>{html.escape(summary.policy)}</code>.
{f'Command: <code>{html.escape(command)}</code>' if command else ''}</p>
<h2>Overview</h2>{overview}
<h2>Alerts</h2>{alerts}
<h2>Steps</h2>{steps}
<h2>How to read this report</h2>
<ul>
<li><b>Downtime</b> is the time from the breach to the end of verification during which any
SLO rule's condition was violated; <b>failed requests</b> integrate rps x edge error rate over
the same span. <b>Error budget burn</b> is the share of the SLO objective's error budget (the
bad requests the target allows in its window, e.g. 0.1 % of 30 days of traffic) that the
incident and the rollback used over that span; a request is bad when it fails or is slower
than the objective's latency threshold. <b>Full outage</b> counts the seconds in which the edge
error rate was 99 % or more.</li>
<li><b>Timelines</b>: shaded bands are the procedure's steps; the red line is the breach that
triggered the rollback, the dashed brown line the incident onset, the dashed green line the end
of verification. Dotted red lines are SLO thresholds.</li>
<li><b>Per-step bars</b> show how long each step takes and how much downtime happens while
it runs; <code>verify</code> is the time after the last step until the SLO held.</li>
<li>Alerts: <code>rollback_failed</code> (a step failed), <code>rollback_ineffective</code>
(SLO not restored by the timeout), <code>too_slow</code> (downtime over budget, or steps
still running after the SLO was restored made the run overrun its timeout),
<code>new_errors</code> (errors the rollback itself caused).</li>
</ul>
{figures}
</body></html>
"""


def write_report(path: str | Path, scenario: Scenario, summary: RehearsalSummary,
                 runs: Sequence[Rehearsal], command: str = "") -> Path:
    return atomic_write_text(path, render_report(scenario, summary, runs, command))
