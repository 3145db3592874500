"""``shadowrl calibrate`` on the real shadow: interrupted, it keeps what finished and
resumes; finished, it writes parameters the simulator loads, a calibrated scenario, and a
report with the held-out error before and after.

Time is compressed 60x and the experiment is the smallest that exercises every part: a
two-level sweep, one rehearsal of a random procedure to fit on, one held-out rehearsal and
its A/A repeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shadowrl.core.spec import load_scenario
from shadowrl.shadow.docker.labels import OWNER_LABEL
from shadowrl.shadow.sim.params import SimParams
from tests.shadow.docker.test_backend import ROOT, cli, fast_scenario

ARGS = ["--fit-runs", "1", "--heldout-runs", "1", "--aa-runs", "1", "--levels", "0.5,1"]


def test_calibrate_resumes_after_an_interrupt_and_writes_a_loadable_calibration(
        docker_client: Any, shadow_images: Any, tmp_path: Path) -> None:
    from shadowrl.shadow.docker.daemon import docker_host

    scenario = fast_scenario(tmp_path)
    out = tmp_path / "cal"
    argv = [sys.executable, "-m", "shadowrl", "calibrate", str(scenario), "--out", str(out),
            *ARGS]
    # Ctrl-C as at a terminal, even when pytest was started where SIGINT is ignored (a
    # background job of a script): Python leaves an inherited SIG_IGN in place
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "DOCKER_HOST": docker_host()},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # one fit rehearsal; a busy CI host once took over 300 s
    while not (out / "experiments" / "fit-0.json").exists():
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline, "fit-0 never finished"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Ctrl-C while the held-out rehearsal runs
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "interrupted: 2 finished experiments kept" in stderr
    assert "Traceback" not in stderr
    owner = f"{OWNER_LABEL}={os.uname().nodename}:{first.pid}"
    assert not docker_client.containers.list(all=True, filters={"label": owner})

    second = cli("calibrate", str(scenario), "--out", str(out), *ARGS, "--json",
                 env={"NO_COLOR": "1"})
    assert second.returncode in (0, 1), second.stderr  # 1: not within tolerance
    result = json.loads(second.stdout)
    assert (result["experiments_run"], result["experiments_reused"]) == (2, 2)
    assert (second.returncode == 0) == result["verdict"]["within"]

    report = json.loads((out / "report.json").read_text())
    assert set(report["error"]["measures"]) == {"downtime_s", "bad_requests"}
    held = report["rehearsals"]["heldout"][0]
    assert held["seed"] == 1000 and held["real"]["steps"]  # a real rehearsal, timed
    # the repeat draws the same deviation (an incident that does not breach is redrawn,
    # so on a noisy shadow the incident itself may differ)
    assert report["rehearsals"]["aa"][0]["repeat"]["seed"] == held["seed"]
    assert report["sweep"]["real"] and report["queueing"]["components"]
    timings = report["mechanics"]["timings"]
    assert any(key.startswith("startup:") and t["n"] >= 1 for key, t in timings.items())
    assert "<img" in (out / "report.html").read_text()

    params = SimParams.load(out / "params.yaml")
    sc = load_scenario(out / "scenario.yaml")
    params.check_against(sc, str(out / "params.yaml"))
    assert sc.simulator.params == "params.yaml"
    assert params.components  # something was fitted per component
    simulated = cli("simulate", str(out / "scenario.yaml"), "--seed", "3", "--json")
    assert simulated.returncode == 0, simulated.stderr

    # the same command again: nothing to run
    third = cli("calibrate", str(scenario), "--out", str(out), *ARGS, "--json")
    assert json.loads(third.stdout)["experiments_run"] == 0
    # other settings in the same folder are refused before any work
    other = cli("calibrate", str(scenario), "--out", str(out), "--fit-runs", "3")
    assert other.returncode == 2 and "holds a calibration with other settings" in other.stderr
