"""The HTML report: self-contained, complete, with real plots."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import struct
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from shadowrl.analysis.report import (  # noqa: E402
    pick_examples,
    render_report,
    timeline_figure,
    write_report,
)
from shadowrl.analysis.summary import summarize  # noqa: E402
from shadowrl.core.spec import Scenario, load_scenario  # noqa: E402
from shadowrl.rehearsal.runner import Rehearsal, rehearse  # noqa: E402
from tests.browser import screenshot

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img\b[^>]*\bsrc='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(CHECKOUT)


@pytest.fixture(scope="module")
def runs(checkout: Scenario) -> list[Rehearsal]:
    return [rehearse(checkout, seed, record_profile=True) for seed in range(6)]


@pytest.fixture(scope="module")
def html(checkout: Scenario, runs: list[Rehearsal]) -> str:
    return render_report(checkout, summarize("checkout", "configured", runs), runs,
                         "shadowrl rehearse envs/checkout.yaml --runs 6")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_is_self_contained(html: str) -> None:
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert html.rstrip().endswith("</html>")
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs, "the report has images"
    for ref in refs:
        assert ref.startswith("data:"), ref
    lowered = html.lower()
    for needle in ("<script", "<link", "<iframe", "@import", "url(", "http://", "https://"):
        assert needle not in lowered, needle


def test_report_has_the_sections_and_tables(html: str, runs: list[Rehearsal]) -> None:
    for heading in ("Overview", "Alerts", "Steps", "How to read this report"):
        assert f"<h2>{heading}</h2>" in html, heading
    assert html.count("<table>") == 3  # overview, alerts, steps
    summary = summarize("checkout", "configured", runs)
    overview = html.split("<h2>Overview</h2>")[1].split("<h2>")[0]
    assert f"<td>{len(runs)}</td>" in overview
    for outcome, count in summary.outcomes.model_dump().items():
        assert f"<th>{outcome}</th>" in overview
        assert f"<td>{count}</td>" in overview
    steps = html.split("<h2>Steps</h2>")[1].split("<h2>")[0]
    for step in summary.steps:
        assert f"<td>{step.name}</td>" in steps
    alerts = html.split("<h2>Alerts</h2>")[1].split("<h2>")[0]
    assert summary.alerts, "checkout's default runbook is too slow on some of these runs"
    for alert in summary.alerts:
        assert f"<td>{alert.kind}</td>" in alerts
        assert f"<td>{alert.count}</td>" in alerts
    assert "shadowrl rehearse envs/checkout.yaml --runs 6" in html


def test_report_has_five_real_pngs(html: str) -> None:
    images = IMG.findall(html)
    assert len(images) == 5  # downtime histogram, per-step bars, 3 timelines
    titles = re.findall(r"<h2>([^<]*)</h2><img", html)
    assert titles[:2] == ["Downtime distribution", "Per-step duration and downtime"]
    # worst, median and best runs are different runs, each named for what it shows
    assert [re.sub(r"\(seed \d+\)", "(seed N)", t) for t in titles[2:]] == [
        "Timeline: worst run (seed N)", "Timeline: median run (seed N)",
        "Timeline: best run (seed N)"]
    assert len(set(titles[2:])) == 3
    for b64 in images:
        data = base64.b64decode(b64, validate=True)
        assert data[:8] == PNG_SIGNATURE
        assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
        assert len(data) > 10_000
        width, height = png_size(data)
        assert width >= 400 and height >= 200
        pixels = plt.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (height, width)


def test_report_without_profiles_has_only_the_summary_plots(checkout: Scenario) -> None:
    bare = [rehearse(checkout, seed) for seed in range(3)]
    html = render_report(checkout, summarize("checkout", "configured", bare), bare)
    assert len(IMG.findall(html)) == 2
    assert "Timeline:" not in html


def test_report_of_no_runs_still_renders(checkout: Scenario) -> None:
    """An interrupted campaign may have no finished run: the report must still be written."""
    html = render_report(checkout, summarize("checkout", "configured", []), [])
    assert "<h2>Overview</h2>" in html and "No alerts." in html
    assert len(IMG.findall(html)) == 2


def test_report_escapes_what_it_shows(checkout: Scenario, runs: list[Rehearsal]) -> None:
    summary = summarize("checkout", "<script>alert(1)</script>", runs[:3])
    html = render_report(checkout, summary, runs[:3], "shadowrl rehearse '<b>x</b>' & y")
    assert "<script>" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "&amp; y" in html


def test_write_report_writes_the_rendered_page(tmp_path: Path, checkout: Scenario,
                                               runs: list[Rehearsal]) -> None:
    summary = summarize("checkout", "configured", runs[:3])
    path = write_report(tmp_path / "r" / "report.html", checkout, summary, runs[:3], "cmd")
    text = path.read_text(encoding="utf-8")
    assert len(IMG.findall(text)) == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def _vlines_at(ax: Any, x: float) -> int:
    found = 0
    for line in ax.lines:
        xs = [float(v) for v in line.get_xdata()]
        if len(xs) == 2 and xs[0] == xs[1] == pytest.approx(x):
            found += 1
    return found


def _strip(fig: Any) -> Any:
    """The step strip: the axes drawn above the four panels."""
    return fig.get_axes()[PANELS]


PANELS = 4  # error rate, p99, requests/s, CPU


def _legend_texts(ax: Any) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, ax.get_ylabel()
    return [t.get_text() for t in legend.get_texts()]


def _boxes_overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_timeline_marks_the_breach_and_shades_the_steps(checkout: Scenario,
                                                        runs: list[Rehearsal]) -> None:
    r = max(runs, key=lambda x: x.downtime_s)
    done = [s for s in r.steps if s.status != "skipped"]
    fig = timeline_figure(checkout, r)
    try:
        axes = fig.get_axes()
        assert len(axes) == PANELS + 1
        for ax in axes[:PANELS]:
            assert _vlines_at(ax, r.breach.at_s) >= 1
            assert _vlines_at(ax, r.injection.onset_s) >= 1
            assert _vlines_at(ax, r.verify_end_s) >= 1
            assert len(ax.patches) >= len(done)
            spans = sorted((round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
                           for p in ax.patches if hasattr(p, "get_x"))
            for s in done:
                assert (round(s.start_s, 6), round(s.end_s, 6)) in spans, s.name
        # the plotted edge series is the profile's edge series
        edge_t = [t for t, c in zip(r.profile["t"], r.profile["component"]) if c == "edge"]
        plotted = axes[0].lines[0].get_xdata()
        assert list(plotted) == edge_t
        # the strip above the panels names every step, in the colour of its band
        strip = _strip(fig)
        labels = {t.get_text(): t for t in strip.texts}
        assert set(labels) == {s.name for s in done}
        assert strip.get_position().y0 > max(ax.get_position().y1 for ax in axes[:PANELS])
        # the load panel plots the edge's requests/s and each component's
        rps_ax = axes[2]
        assert rps_ax.get_ylabel() == "requests/s"
        edge_rps = [v for v, c in zip(r.profile["rps"], r.profile["component"]) if c == "edge"]
        assert list(rps_ax.lines[0].get_ydata()) == edge_rps
        assert "edge" in _legend_texts(rps_ax) and "db" in _legend_texts(rps_ax)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("label", ["worst run", "median run", "best run"])
def test_timeline_title_says_which_example_it_is(checkout: Scenario, runs: list[Rehearsal],
                                                 label: str) -> None:
    r = runs[1]
    fig = timeline_figure(checkout, r, label)
    try:
        title = fig.get_suptitle()
        assert title.startswith(f"{label} (seed {r.seed}): ")
        assert r.incident in title and r.outcome in title
        assert f"downtime {r.downtime_s:.0f} s" in title
        assert "red line" not in title  # the legend explains the lines, not the title
    finally:
        plt.close(fig)


def test_timeline_legends_name_the_bands_and_the_lines(checkout: Scenario,
                                                       runs: list[Rehearsal]) -> None:
    r = runs[0]
    done = [s for s in r.steps if s.status != "skipped"]
    fig = timeline_figure(checkout, r, "best run")
    try:
        ax_err, ax_p99, ax_rps, ax_cpu, strip = fig.get_axes()
        bands = _legend_texts(strip)
        assert [b.split()[0] for b in bands] == [s.name for s in done]
        assert all(b.endswith(" s") for b in bands)  # each step's duration
        # a band's legend entry has the colour of the band shading the panels
        entries = strip.get_legend().get_patches()
        panel_colours = [p.get_facecolor()[:3] for p in ax_err.patches]
        for entry in entries:
            assert entry.get_facecolor()[:3] in panel_colours
        lines = _legend_texts(ax_p99)
        for needle in ("incident onset", "SLO breach", "verification end", "SLO threshold"):
            assert any(needle in line for line in lines), (needle, lines)
        # the legends sit beside the panels, not on the data
        renderer = fig.canvas.get_renderer()
        for ax in (strip, ax_p99, ax_rps, ax_cpu):
            legend = ax.get_legend().get_window_extent(renderer)
            assert legend.x0 >= ax_err.get_window_extent(renderer).x1
    finally:
        plt.close(fig)


def test_step_labels_do_not_overlap(checkout: Scenario, runs: list[Rehearsal]) -> None:
    r = runs[0]
    # checkout's flush-cache (1 s) runs between migrate-db-down and warm-cache (30 s)
    squeezed = []  # and here every step is squeezed into the first ten seconds
    at = r.breach.at_s
    for s in r.steps:
        span = dataclasses.replace(s.span, start_s=at, end_s=at + 1.0)
        squeezed.append(dataclasses.replace(s, span=span))
        at += 1.5
    for run in (r, dataclasses.replace(r, steps=squeezed)):
        fig = timeline_figure(checkout, run)
        try:
            renderer = fig.canvas.get_renderer()
            strip = _strip(fig)
            boxes = {t.get_text(): t.get_window_extent(renderer) for t in strip.texts}
            assert len(boxes) == len([s for s in run.steps if s.status != "skipped"])
            names = list(boxes)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    assert not _boxes_overlap(boxes[a], boxes[b]), (a, b)
            strip_box = strip.get_window_extent(renderer)
            for name, box in boxes.items():  # inside the strip, so on the page
                assert strip_box.x0 - 1 <= box.x0 and box.x1 <= strip_box.x1 + 1, name
                assert strip_box.y0 - 1 <= box.y0 and box.y1 <= strip_box.y1 + 1, name
            # and no step label overlaps a panel
            for ax in fig.get_axes()[:PANELS]:
                panel = ax.get_window_extent(renderer)
                assert not any(_boxes_overlap(panel, box) for box in boxes.values())
        finally:
            plt.close(fig)


def test_error_axis_of_a_zero_rate_starts_at_zero(checkout: Scenario,
                                                   runs: list[Rehearsal]) -> None:
    r = runs[0]
    profile = dict(r.profile)
    profile["error_rate"] = [0.0] * len(profile["error_rate"])
    fig = timeline_figure(checkout, dataclasses.replace(r, profile=profile))
    try:
        ax_err = fig.get_axes()[0]
        low, high = ax_err.get_ylim()
        assert low == 0.0
        assert high > 0.01  # the SLO threshold (1 %) is inside the axis, with headroom
        labels = [t.get_text() for t in ax_err.get_yticklabels()]
        assert not any(lab.startswith(("-", "\N{MINUS SIGN}")) for lab in labels), labels
        assert any(lab.endswith("%") for lab in labels)
    finally:
        plt.close(fig)
    # and no panel goes below zero on a real run either
    fig = timeline_figure(checkout, r)
    try:
        for ax in fig.get_axes()[:PANELS]:
            assert ax.get_ylim()[0] == 0.0, ax.get_ylabel()
    finally:
        plt.close(fig)


def test_cpu_panel_leaves_out_components_without_cpu(checkout: Scenario,
                                                     runs: list[Rehearsal]) -> None:
    r = runs[0]
    caches = {c.name for c in checkout.deployment.caches}
    assert caches == {"cache"}
    fig = timeline_figure(checkout, r)
    try:
        ax_cpu = fig.get_axes()[3]
        drawn = {line.get_label(): line for line in ax_cpu.lines
                 if not line.get_label().startswith("_")}
        services = {s.name for s in checkout.deployment.services}
        stores = {d.name for d in checkout.deployment.datastores}
        assert set(drawn) == services | stores
        for name, line in drawn.items():
            assert max(map(float, line.get_ydata())) > 0, name  # no flat zero line
        legend = ax_cpu.get_legend()
        assert "no CPU metric: cache" in legend.get_title().get_text()
        assert set(_legend_texts(ax_cpu)) == services | stores
    finally:
        plt.close(fig)


def test_timeline_draws_the_slo_thresholds(checkout: Scenario, runs: list[Rehearsal]) -> None:
    fig = timeline_figure(checkout, runs[0])
    try:
        ax_err, ax_p99 = fig.get_axes()[:2]

        def hlines(ax: Any) -> set[float]:
            return {float(line.get_ydata()[0]) for line in ax.lines
                    if len(set(map(float, line.get_ydata()))) == 1
                    and list(line.get_xdata()) == [0, 1]}

        assert 0.01 in hlines(ax_err)  # edge-errors above 0.01
        assert 800.0 in hlines(ax_p99)  # edge-latency above 800 ms
        renderer = fig.canvas.get_renderer()
        for ax, text in ((ax_err, "SLO edge-errors: > 1%"),
                         (ax_p99, "SLO edge-latency: > 800 ms")):
            found = [t for t in ax.texts if t.get_text() == text]
            assert found, [t.get_text() for t in ax.texts]
            box = found[0].get_window_extent(renderer)
            panel = ax.get_window_extent(renderer)
            assert panel.x0 <= box.x0 and box.x1 <= panel.x1  # inside its panel
            assert panel.y0 <= box.y0 and box.y1 <= panel.y1
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- examples


def test_pick_examples_labels_worst_median_and_best(runs: list[Rehearsal]) -> None:
    ranked = sorted(runs, key=lambda r: r.downtime_s)
    picked = pick_examples(runs)
    assert [e.label for e in picked] == ["worst run", "median run", "best run"]
    assert [e.run for e in picked] == [ranked[-1], ranked[len(ranked) // 2], ranked[0]]
    # picked from scalar fields: the same runs whether or not they carry profiles
    bare = [dataclasses.replace(r, profile=None) for r in runs]
    assert [(e.label, e.run.seed) for e in pick_examples(bare)] == [
        (e.label, e.run.seed) for e in picked]
    two = pick_examples(ranked[:2])
    assert [(e.label, e.run) for e in two] == [("worst run", ranked[1]),
                                               ("best run", ranked[0])]
    assert [(e.label, e.run) for e in pick_examples(ranked[:1])] == [("only run", ranked[0])]
    assert pick_examples([]) == []


def test_report_needs_profiles_only_for_the_examples(checkout: Scenario,
                                                     runs: list[Rehearsal]) -> None:
    """A campaign that streams runs to disk keeps only the examples' profiles."""
    keep = {id(e.run) for e in pick_examples(runs)}
    thin = [r if id(r) in keep else dataclasses.replace(r, profile=None) for r in runs]
    summary = summarize("checkout", "configured", thin)
    assert render_report(checkout, summary, thin) == render_report(checkout, summary, runs)
    # examples without profiles: no timeline, and the page says why
    bare = [dataclasses.replace(r, profile=None) for r in runs]
    html = render_report(checkout, summary, bare)
    assert len(IMG.findall(html)) == 2 and "no example timelines" in html


def test_alert_table_counts_alerts_and_runs(checkout: Scenario, runs: list[Rehearsal]) -> None:
    summary = summarize("checkout", "configured", runs)
    html = render_report(checkout, summary, runs)
    section = html.split("<h2>Alerts</h2>")[1].split("<h2>")[0]
    headers = re.findall(r"<th>([^<]*)</th>", section)
    assert headers == ["kind", "step", "alerts", "runs", "example"]
    rows = [re.findall(r"<td>([^<]*)</td>", row)
            for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1])]
    assert len(rows) == len(summary.alerts)
    for row, group in zip(rows, summary.alerts):
        raised = sum(any((a.kind, a.step) == (group.kind, group.step) for a in r.alerts)
                     for r in runs)
        assert row[2] == str(group.count)
        assert row[3] == f"{raised}\u00a0of\u00a0{len(runs)}"
        assert row[4] == escape(group.example)  # the example alone, not the whole message
        assert "; e.g. " not in row[4]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt: chromium)")
def test_report_renders_in_a_browser(tmp_path: Path, checkout: Scenario, html: str) -> None:
    """What a user sees: headless Chromium draws the page with its plots, not a blank."""
    pixels = screenshot(html, tmp_path, 6000)
    height = pixels.shape[0]
    ink = (pixels < 0.9).any(axis=2)  # anything not (near) white
    rows_with_ink = ink.any(axis=1)
    # text at the top, and the plots below it: most of the page's height is drawn on
    assert rows_with_ink[: height // 10].any()
    assert rows_with_ink.mean() > 0.5, rows_with_ink.mean()
    # the plots are in colour (bands, series): the inline PNGs were decoded and drawn
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2
    assert colourful[height // 3:].mean() > 0.01
