"""The HTML report: self-contained, complete, with real plots."""

from __future__ import annotations

import base64
import io
import re
import struct
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from shadowrl.analysis.report import render_report, timeline_figure, write_report  # noqa: E402
from shadowrl.analysis.summary import summarize  # noqa: E402
from shadowrl.core.spec import Scenario, load_scenario  # noqa: E402
from shadowrl.rehearsal.runner import Rehearsal, rehearse  # noqa: E402

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
    assert all(t.startswith("Timeline: seed ") for t in titles[2:])
    assert len(set(titles[2:])) == 3  # worst, median and best runs are different runs
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


def test_timeline_marks_the_breach_and_shades_the_steps(checkout: Scenario,
                                                        runs: list[Rehearsal]) -> None:
    r = max(runs, key=lambda x: x.downtime_s)
    done = [s for s in r.steps if s.status != "skipped"]
    fig = timeline_figure(checkout, r)
    try:
        axes = fig.get_axes()
        assert len(axes) >= 3
        for ax in axes[:3]:
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
        # step names label the first panel
        texts = {t.get_text() for t in axes[0].texts}
        assert {s.name for s in done} <= texts
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
    finally:
        plt.close(fig)
