"""The service's dashboard in a real headless Chromium (Selenium + Debian's chromedriver),
against the real service: ``shadowrl serve`` with its SQLite file, one simulated deployment
rehearsed at start-up and once more on a trigger, and a read token given in the URL.

What the page shows is checked against what the API says: the deployment's row and verdict
badge, one trend point per verdict (in the verdicts' order), the jobs, and a rehearsal's
timeline (one SVG path per series with a point per sample, a shaded band per rollback step,
the run picker); a wrong token shows the auth error and the form, which then takes a good one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.service._browser_fixtures import Served, headless_chromium, running_service, wait_for

pytestmark = pytest.mark.xdist_group("dashboard-browser")  # one service and browser for both

RUNS = 3
TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}
POINT = re.compile(r"[ML]\s*(-?\d+(?:\.\d+)?)[\s,]+(-?\d+(?:\.\d+)?)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The service with two verdicts: the start-up rehearsal's and a triggered one's."""
    with running_service(tmp_path_factory.mktemp("service"), runs=RUNS) as s:
        wait_for("the start-up rehearsal's verdict",
                 lambda: s.get("/api/v1/deployments/checkout/verdict"), 180, s)
        job = s.post("/api/v1/deployments/checkout/rehearsals", {"runs": RUNS, "seed": 7})

        def finished() -> Any:
            j = s.get(f"/api/v1/jobs/{job['id']}?wait=5&since={job['revision']}")
            return j if j["status"] in TERMINAL else None

        done = wait_for(f"triggered rehearsal job {job['id']}", finished, 180, s)
        assert done["status"] == "succeeded", done
        wait_for("two verdicts",
                 lambda: len(s.get("/api/v1/deployments/checkout/verdicts?limit=50")) >= 2,
                 30, s)
        yield s


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as d:
        yield d


def page_wait(driver: Any, what: str, check: Callable[[Any], Any], timeout_s: float = 30) -> Any:
    """Wait until ``check(driver)`` is truthy; the page redraws on each poll, so an element
    gone stale between finding and reading counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(check)
    except TimeoutException:
        logs = [e["message"] for e in driver.get_log("browser")]
        pytest.fail(f"timed out waiting for {what}; browser console: {logs}")


def open_dashboard(driver: Any, served: Served, token: str) -> None:
    driver.get("about:blank")  # a fresh load: the fragment alone would not reload the page
    driver.get(f"{served.url}/dashboard/#token={token}")


def by_testid(root: Any, testid: str, many: bool = False) -> Any:
    from selenium.webdriver.common.by import By

    css = f'[data-testid="{testid}"]'
    if many:
        return root.find_elements(By.CSS_SELECTOR, css)
    return root.find_element(By.CSS_SELECTOR, css)


def path_points(path: Any) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in POINT.findall(path.get_attribute("d") or "")]


def finite(values: list[Any]) -> int:
    return sum(1 for v in values if isinstance(v, (int, float)) and math.isfinite(v))


def step_segments(steps: list[str | None]) -> list[str]:
    """The rollback steps in order, one per contiguous stretch of samples."""
    out: list[str] = []
    previous: str | None = None
    for s in steps:
        if s and s != previous:
            out.append(s)
        previous = s
    return out


def severe_console(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_dashboard_matches_the_api(served: Served, driver: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    deployment = next(d for d in served.get("/api/v1/deployments") if d["name"] == "checkout")
    verdict = deployment["verdict"]
    verdicts = served.get("/api/v1/deployments/checkout/verdicts?limit=50")
    jobs = served.get("/api/v1/jobs?deployment=checkout&limit=15")
    assert verdict is not None and len(verdicts) >= 2

    open_dashboard(driver, served, served.read_token)
    row = page_wait(driver, "the checkout row", lambda d: d.find_element(
        By.CSS_SELECTOR, '[data-testid="deployment-row"][data-name="checkout"]'))
    # the token left the address bar and stays in this tab only
    assert "token" not in driver.current_url
    assert driver.execute_script("return sessionStorage.getItem('shadowrl.token')") \
        == served.read_token

    # the row and its verdict badge say what the API says
    def row_facts(d: Any) -> dict[str, Any]:
        r = d.find_element(By.CSS_SELECTOR, '[data-testid="deployment-row"][data-name="checkout"]')
        badge = by_testid(r, "verdict")
        return {"healthy": badge.get_attribute("data-healthy"), "status": badge.text,
                "shown": badge.is_displayed(), "backend": by_testid(r, "backend").text,
                "drift": by_testid(r, "drift").get_attribute("data-drift"),
                "source": by_testid(r, "procedure").get_attribute("data-source"),
                "reasons": [li.text for li in r.find_elements(
                    By.CSS_SELECTOR, '[data-testid="verdict-reasons"] li')]}

    facts = page_wait(driver, "the row's facts", row_facts)
    assert facts == {"healthy": str(verdict["healthy"]).lower(), "status": verdict["status"],
                     "shown": True, "backend": deployment["backend"],
                     "drift": str(deployment["drift"]), "reasons": verdict["reasons"],
                     "source": deployment["procedure"]["source"]}
    assert row.get_attribute("data-name") == "checkout"

    # rehearsal history: one point per verdict, oldest first, higher values drawn higher
    def trend(testid: str) -> list[tuple[float, float]]:
        return page_wait(driver, f"{testid}'s line", lambda d: path_points(d.find_element(
            By.CSS_SELECTOR, f'[data-testid="{testid}"] svg path[data-series]')) or None)

    for testid, key in (("trend-downtime", "downtime_s"), ("trend-burn", "budget_burn")):
        points = trend(testid)
        values = [v[key]["mean"] for v in reversed(verdicts)]
        assert len(points) == len(verdicts), (testid, points, values)
        xs = [x for x, _ in points]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)
        for (_, ya), va in zip(points, values):
            for (_, yb), vb in zip(points, values):
                if va > vb + 1e-9 * max(1.0, abs(vb)):
                    assert ya < yb, (testid, points, values)  # SVG y grows downwards

    # recent jobs: each one listed with its status and progress
    def job_rows(d: Any) -> dict[str, tuple[str, str]]:
        return {r.get_attribute("data-id"): (by_testid(r, "job-status").text,
                                             by_testid(r, "job-progress").text.strip())
                for r in by_testid(d, "job-row", many=True)} or None

    shown = page_wait(driver, "the jobs", job_rows)
    assert shown == {str(j["id"]): (j["status"],
                                    f"{j['progress']['done']}/{j['progress']['total']}")
                     for j in jobs}

    # the newest rehearsal's timeline, as the API draws it by default (the worst run)
    newest = next(j for j in jobs if j["kind"] == "rehearse" and j["status"] == "succeeded")
    timeline = served.get(f"/api/v1/jobs/{newest['id']}/timeline")
    assert len(timeline["runs"]) == RUNS

    def click_timeline(d: Any) -> bool:
        d.find_element(By.CSS_SELECTOR,
                       f'[data-testid="open-timeline"][data-job="{newest["id"]}"]').click()
        return True

    page_wait(driver, "the timeline button", click_timeline)
    check_timeline(driver, timeline)

    # another run from the picker redraws it from that run's series
    other = next(r["run"] for r in timeline["runs"] if r["run"] != timeline["run"])
    Select(by_testid(driver, "run-picker")).select_by_value(str(other))
    page_wait(driver, f"run {other}'s timeline", lambda d: by_testid(d, "timeline")
              .get_attribute("data-run") == str(other))
    check_timeline(driver, served.get(f"/api/v1/jobs/{newest['id']}/timeline?run={other}"))

    assert severe_console(driver) == []
    shot = os.environ.get("SHADOWRL_DASHBOARD_SCREENSHOT")
    if shot:
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, height + 40)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(shot)


def check_timeline(driver: Any, timeline: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    section = page_wait(driver, "the timeline", lambda d: (
        lambda s: s if s.is_displayed() and s.get_attribute("data-job") == str(timeline["job"])
        and s.get_attribute("data-run") == str(timeline["run"]) else None)(
        by_testid(d, "timeline")))
    series = timeline["series"]
    svgs = section.find_elements(By.CSS_SELECTOR, "svg")
    assert len(svgs) == 2
    drawn = {}
    for svg in svgs:
        paths = svg.find_elements(By.CSS_SELECTOR, "path")
        assert len(paths) == 1  # one series per chart
        drawn[paths[0].get_attribute("data-series")] = path_points(paths[0])
    assert sorted(drawn) == ["error_rate", "latency_p99_ms"]
    for name, points in drawn.items():
        assert len(points) == finite(series[name]) > 10, name
        xs = [x for x, _ in points]
        assert xs == sorted(xs), name  # along seconds since breach
    # a shaded band per rollback step stretch, in order, in both charts
    steps = step_segments(series["step"])
    assert steps, "a rehearsal's worst run has rollback steps"
    for svg in svgs:
        bands = [g.get_attribute("data-step") for g in svg.find_elements(By.CSS_SELECTOR, "g.band")]
        assert bands == steps
    assert [li.text.split(":")[0] for li in by_testid(section, "timeline-step", many=True)] \
        == steps
    picker = by_testid(section, "run-picker")
    options = picker.find_elements(By.TAG_NAME, "option")
    assert [o.get_attribute("value") for o in options] == [str(r["run"]) for r in timeline["runs"]]
    assert picker.get_attribute("value") == str(timeline["run"])
    assert f"run {timeline['run']}" in by_testid(section, "timeline-title").text


def test_a_wrong_token_shows_the_auth_error_then_the_form_takes_a_good_one(
        served: Served, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    open_dashboard(driver, served, "not-a-token")
    error = page_wait(driver, "the auth error", lambda d: (
        lambda e: e if e.is_displayed() else None)(by_testid(d, "auth-error")))
    assert "401" in error.text and "refused" in error.text
    assert not by_testid(driver, "deployments").is_displayed()
    assert by_testid(driver, "deployment-row", many=True) == []
    assert "token" not in driver.current_url

    field = driver.find_element(By.ID, "token-input")
    assert field.is_displayed()
    field.send_keys(served.read_token)
    driver.find_element(By.CSS_SELECTOR, '#auth-form button[type="submit"]').click()
    page_wait(driver, "the deployments after a good token", lambda d: d.find_element(
        By.CSS_SELECTOR, '[data-testid="deployment-row"][data-name="checkout"]').is_displayed())
    assert not by_testid(driver, "auth").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('shadowrl.token')") \
        == served.read_token
