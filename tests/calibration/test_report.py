"""The calibration report renders what ``calibrate`` computes: the result here comes from
the real pipeline on the simulator ("real" data from a simulator with changed parameters,
so no Docker), and the page must show every section, its plots, the verdict in words, and
still render when the optional parts are empty."""

from __future__ import annotations

import copy
import re
import shutil
from html import escape
from pathlib import Path
from typing import Any

import pytest

from shadowrl.app.calibrate import CalibrateRequest, _fit_and_report, _plans
from shadowrl.calibration import fit
from shadowrl.calibration.experiments import rehearsal_record
from shadowrl.calibration.report import fitted_marks, render_report, write_report
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.shadow.sim.params import SimParams, attach_params
from tests.browser import screenshot

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "envs" / "checkout.yaml"
LEVELS = (0.5, 1.0, 1.6)
IMG = re.compile(r"<img alt='[^']*' src='data:image/png;base64,[A-Za-z0-9+/=]+'>")
SECTIONS = ["Held-out error", "Load sweep and queueing fit", "Mechanics", "Rehearsal fit",
            "A/A", "Fitted parameters"]
# what a real shadow times and the simulator does not: gives the mechanics plot its data
TIMINGS = [["startup", "web", 30.0], ["startup", "web", 34.0], ["startup", "orders", 50.0],
           ["stop", "web", 1.0], ["stop", "orders", 1.4], ["migration_offline", "db", 96.0]]


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(SCENARIO)


def _result(sc: Scenario, fit_runs: int, aa_runs: int,
            levels: tuple[float, ...] = LEVELS) -> dict[str, Any]:
    """What ``calibrate`` writes to report.json, with a simulator standing in for the real
    shadow (its overloaded components answer faster: queue_timeout_s 0.5)."""
    request = CalibrateRequest(file=SCENARIO, fit_runs=fit_runs, heldout_runs=2,
                               aa_runs=aa_runs, levels=levels,
                               command="shadowrl calibrate envs/checkout.yaml")
    truth = SimParams(queue_timeout_s=0.5)
    real_sc = attach_params(sc, truth)
    real_sweep = fit.sim_sweep(real_sc, truth, levels)
    records = {name: rehearsal_record(real_sc, seed, plan, "sim")
               for name, (seed, plan) in _plans(sc, request).items()}
    for name, rec in records.items():
        if name.startswith("fit-"):
            rec["timings"] = TIMINGS
    result = _fit_and_report(sc, request, real_sweep, records, lambda _m: None)
    result["experiments"] = {"run": len(records) + 1, "reused": 0}
    return result


@pytest.fixture(scope="module")
def result(checkout: Scenario) -> dict[str, Any]:
    return _result(checkout, fit_runs=2, aa_runs=1)


@pytest.fixture(scope="module")
def page(result: dict[str, Any]) -> str:
    return render_report(result)


def _expected_images(result: dict[str, Any]) -> int:
    """Bars per measure, a sweep plot per component, two mechanics strips, one scatter."""
    components = {r["component"] for r in result["sweep"]["real"]}
    return len(result["error"]["measures"]) + len(components) + 2 + 1


def test_the_report_has_every_section_and_plot(page: str, result: dict[str, Any]) -> None:
    titles = re.findall(r"<h2>([^<]*)</h2>", page)
    assert titles == [escape(t) for t in SECTIONS]
    assert result["rehearsals"]["fit"] and result["rehearsals"]["aa"]
    assert result["mechanics"]["timings"]  # the injected timings were fitted
    assert len(IMG.findall(page)) == _expected_images(result)
    for component in result["queueing"]["components"]:
        assert f"alt='Load sweep: {component}'" in page
    assert "Command: <code>shadowrl calibrate envs/checkout.yaml</code>" in page
    fitted = result["params"]["queue_timeout_s"]  # the "real" side's 0.5 moved it
    assert "<pre>" in page and f"queue_timeout_s: {fitted}" in page  # the params as YAML


def test_the_verdict_is_in_plain_words(page: str, result: dict[str, Any]) -> None:
    assert result["verdict"]["within"]
    assert "is within tolerance</b>" in page
    assert "NOT within" not in page
    failed = copy.deepcopy(result)
    failed["verdict"]["within"] = False
    failed["verdict"]["measures"]["bad_requests"]["within"] = False
    html = render_report(failed)
    assert "is NOT within tolerance</b>" in html
    assert re.search(r"bad requests: error [^<]*allowed [^<]*: <b>NOT within</b>", html)
    assert re.search(r"downtime \(s\): error [^<]*allowed [^<]*: <b>within</b>", html)


def test_text_from_the_result_is_escaped(result: dict[str, Any]) -> None:
    evil = copy.deepcopy(result)
    evil["scenario"] = "<script>alert('name')</script>"
    evil["command"] = "shadowrl calibrate x.yaml --out '<script>alert(1)</script>'"
    evil["params"]["components"]["<img src=x onerror=alert(2)>"] = {"latency": 0.1}
    html = render_report(evil)
    assert "<script>" not in html and "<img src=x" not in html
    assert escape(evil["scenario"]) in html
    assert escape(evil["command"]) in html


def test_empty_optional_parts_still_render(checkout: Scenario) -> None:
    """No fitting rehearsal (no mechanics, the rehearsal fit is skipped), no A/A run, a
    sweep with one level (the queueing fit is skipped): every section still renders and
    says what is missing."""
    bare = _result(checkout, fit_runs=0, aa_runs=0, levels=(1.0,))
    assert bare["rehearsal_fit"] == {"skipped": "no rehearsals"}
    assert "skipped" in bare["queueing"]
    html = render_report(bare)
    assert re.findall(r"<h2>([^<]*)</h2>", html) == [escape(t) for t in SECTIONS]
    assert "Rehearsal fit skipped: no rehearsals." in html
    assert "Queueing fit skipped" in html
    assert "No A/A rehearsal was run." in html
    # the mechanics come from the fitting rehearsals only: none here
    assert "Timed by the real shadow: none recorded." in html
    assert "Step durations: none recorded." in html
    # held-out bars per measure, a sweep plot per component, the held-out steps' scatter
    components = {r["component"] for r in bare["sweep"]["real"]}
    assert len(IMG.findall(html)) == len(bare["error"]["measures"]) + len(components) + 1


def test_a_nearly_empty_result_renders() -> None:
    html = render_report({"scenario": "s", "rehearsals": {"fit": [], "heldout": [], "aa": []},
                          "rehearsal_fit": {"skipped": "no rehearsals"}})
    assert re.findall(r"<h2>([^<]*)</h2>", html) == [escape(t) for t in SECTIONS]
    assert "No verdict" in html and not IMG.findall(html)


def test_fitted_marks_name_the_mechanics_and_the_final_value() -> None:
    applied = {"stop_s": 16.6, "components": {"web": {"startup": 61.7},
                                              "db": {"migration_duration": 90.0,
                                                     "online_factor": 4.0}}}
    params = {"stop_s": 12.45, "components": {"web": {"startup": 61.7},
                                              "db": {"migration_duration": 90.0,
                                                     "online_factor": 4.0}}}
    assert fitted_marks("stop:web", applied, params) == [
        ("mechanics fit", 16.6), ("final (after rehearsal fit)", 12.45)]
    assert fitted_marks("startup:web", applied, params) == [("mechanics fit", 61.7)]
    assert fitted_marks("migration_online:db", applied, params) == [("mechanics fit", 360.0)]
    assert fitted_marks("rollback_version", applied, params) == []


def test_write_report_writes_the_page(tmp_path: Path, result: dict[str, Any],
                                      page: str) -> None:
    path = write_report(tmp_path / "report.html", result)
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt: chromium)")
def test_report_renders_in_a_browser(tmp_path: Path, page: str) -> None:
    """What a user sees: headless Chromium draws the page with its plots, not a blank
    (the same check as the rehearsal report's, tests/analysis/test_report.py)."""
    pixels = screenshot(page, tmp_path, 4000)
    height = pixels.shape[0]
    ink = (pixels < 0.9).any(axis=2)  # anything not (near) white
    rows_with_ink = ink.any(axis=1)
    assert rows_with_ink[: height // 10].any()  # the header
    assert rows_with_ink.mean() > 0.5, rows_with_ink.mean()
    # the plots are in colour (bars, lines): the inline PNGs were decoded and drawn
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2
    assert colourful[height // 4:].mean() > 0.005, colourful[height // 4:].mean()
