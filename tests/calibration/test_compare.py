"""The sim-vs-real comparison's bookkeeping, on two simulators (the real pair runs in
benchmarks/sim_vs_real.py and the demo)."""

from __future__ import annotations

from pathlib import Path

from shadowrl.calibration.compare import compare_backends, gap, run_facts, side_by_side
from shadowrl.core.spec import load_scenario
from shadowrl.rehearsal.runner import rehearse

ROOT = Path(__file__).resolve().parents[2]


def test_the_same_backend_twice_has_no_gap() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    rows = compare_backends(sc, {"configured": sc.procedure}, [1, 2], backends=("sim", "sim"))
    assert [(r["procedure"], r["seed"]) for r in rows] == [("configured", 1), ("configured", 2)]
    for row in rows:
        g = row["gap"]
        assert g["same_outcome"] and g["same_incident"]
        assert all(g[m] == 0 for m in ("downtime_s", "bad_requests", "rollback_s"))
        assert set(g["steps"]) == set(row["sim"]["steps"]) and not any(g["steps"].values())
    table = side_by_side(rows, backends=("sim",))
    assert table.count("\n") == 1 + len(rows) and "bad-web-release" in table


def test_the_gap_is_the_second_minus_the_first() -> None:
    sc = load_scenario(ROOT / "envs" / "checkout.yaml")
    a = run_facts(rehearse(sc, 1))
    b = dict(a, downtime_s=a["downtime_s"] + 30.0, outcome="rollback_failed",
             steps={**a["steps"], "revert-web": a["steps"]["revert-web"] + 12.0})
    g = gap(a, b)
    assert g["downtime_s"] == 30.0 and g["steps"]["revert-web"] == 12.0
    assert not g["same_outcome"] and g["same_incident"]
