"""Performance Profiler: the per-second table, its Parquet file and downtime attribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowrl.analysis.profile import (
    PROFILE_COLUMNS,
    PROFILE_SCHEMA,
    ProfileWriter,
    attribution,
    profile_table,
    read_profiles,
    system_allocator,
    write_profiles,
)
from shadowrl.core.plan import configured_plan
from shadowrl.core.spec import Scenario, load_scenario
from shadowrl.rehearsal.runner import Rehearsal, rehearse

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = ROOT / "envs" / "checkout.yaml"
PHASES = {"normal", "incident", "rollback", "verify"}


@pytest.fixture(scope="module")
def checkout() -> Scenario:
    return load_scenario(CHECKOUT)


@pytest.fixture(scope="module")
def runs(checkout: Scenario) -> list[Rehearsal]:
    return [rehearse(checkout, seed, record_profile=True) for seed in (0, 1, 2)]


def components(sc: Scenario) -> set[str]:
    d = sc.deployment
    return {c.name for group in (d.services, d.datastores, d.caches) for c in group} | {"edge"}


def rows_of(runs: list[Rehearsal]) -> list[dict]:
    return profile_table(runs).to_pylist()


def test_one_row_per_second_per_component_plus_edge(checkout: Scenario,
                                                    runs: list[Rehearsal]) -> None:
    table = profile_table(runs)
    assert table.schema == PROFILE_SCHEMA
    names = components(checkout)
    total = 0
    for k, r in enumerate(runs):
        rows = [row for row in table.to_pylist() if row["run"] == k]
        seconds = sorted({row["t"] for row in rows})
        # every whole second from launch to the end of verification
        assert seconds == [float(s) for s in range(len(seconds))]
        assert seconds[-1] == np.floor(r.verify_end_s)
        assert len(rows) == len(seconds) * len(names)
        for t in (seconds[0], seconds[len(seconds) // 2], seconds[-1]):
            assert sorted(row["component"] for row in rows if row["t"] == t) == sorted(names)
        total += len(rows)
    assert table.num_rows == total


def test_identity_columns(runs: list[Rehearsal]) -> None:
    for row in rows_of(runs):
        r = runs[row["run"]]
        assert row["seed"] == r.seed
        assert row["scenario"] == "checkout"
        assert row["incident"] == r.incident
        assert row["since_breach_s"] == pytest.approx(row["t"] - r.breach.at_s, abs=1e-9)
        for key in ("rps", "error_rate", "latency_p50_ms", "latency_p99_ms", "cpu", "memory"):
            assert row[key] is not None and np.isfinite(row[key]) and row[key] >= 0, key
        assert row["error_rate"] <= 1.0
        assert row["latency_p99_ms"] >= row["latency_p50_ms"]


def test_steps_are_named_only_during_their_spans(runs: list[Rehearsal]) -> None:
    for k, r in enumerate(runs):
        rows = [row for row in rows_of(runs) if row["run"] == k]
        done = [s for s in r.steps if s.status != "skipped"]
        assert done
        spans = {s.name: (s.start_s, s.end_s) for s in done}
        last_end = max(s.end_s for s in done)
        seen = set()
        for row in rows:
            t, step = row["t"], row["step"]
            if step is not None:
                start, end = spans[step]
                assert start - 1e-9 <= t <= end + 1e-9, (step, t, start, end)
                seen.add(step)
            if t < r.breach.at_s or t > last_end:
                assert step is None, (t, step)
            for name, (start, end) in spans.items():
                if start < t < end:
                    assert step == name, (t, step, name)
        # every step that lasted at least a second shows up
        assert seen >= {s.name for s in done if s.end_s - s.start_s >= 1.0}


def test_phase_values(runs: list[Rehearsal]) -> None:
    for k, r in enumerate(runs):
        last_end = max(s.end_s for s in r.steps if s.status != "skipped")
        for row in (row for row in rows_of(runs) if row["run"] == k):
            t, phase = row["t"], row["phase"]
            assert phase in PHASES
            if r.injection.onset_s <= t < r.breach.at_s:
                assert phase == "incident", (t, phase)
            elif t < r.breach.at_s:
                assert phase in ("normal", "incident"), (t, phase)
            elif t <= last_end:
                assert phase == "rollback", (t, phase)
            else:
                assert phase == "verify", (t, phase)


def test_seconds_before_the_onset_are_normal(runs: list[Rehearsal]) -> None:
    for k, r in enumerate(runs):
        before = [row["phase"] for row in rows_of(runs)
                  if row["run"] == k and row["t"] < r.injection.onset_s - 1]
        assert before and set(before) == {"normal"}


def test_profile_agrees_with_the_measured_downtime(checkout: Scenario,
                                                    runs: list[Rehearsal]) -> None:
    """Seconds in which any SLO condition is violated, counted from the sampled profile,
    match the integrated downtime (sampling differs by at most a few seconds)."""
    for k, r in enumerate(runs):
        rows = [row for row in rows_of(runs) if row["run"] == k]
        by_t: dict[float, dict[str, dict]] = {}
        for row in rows:
            by_t.setdefault(row["t"], {})[row["component"]] = row
        violated = 0
        for t, comps in by_t.items():
            if not (r.breach.at_s <= t < r.verify_end_s):
                continue
            for rule in checkout.slo.rules:
                value = comps[rule.scope][rule.metric]
                if (rule.above is not None and value > rule.above) or (
                        rule.below is not None and value < rule.below):
                    violated += 1
                    break
        assert r.downtime_s > 0
        assert abs(violated - r.downtime_s) <= 3.0, (violated, r.downtime_s)


def test_runs_without_a_profile_are_left_out(checkout: Scenario,
                                             runs: list[Rehearsal]) -> None:
    bare = rehearse(checkout, 7)
    assert bare.profile is None
    table = profile_table([bare, runs[0]])
    assert set(table.column("run").to_pylist()) == {1}  # run index = position in the list
    assert profile_table([bare]).num_rows == 0
    assert profile_table([]).schema == PROFILE_SCHEMA


def test_write_profiles_round_trips(tmp_path: Path, runs: list[Rehearsal]) -> None:
    path = write_profiles(tmp_path / "out" / "profiles.parquet", runs)
    assert path == tmp_path / "out" / "profiles.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["profiles.parquet"]
    back = pq.read_table(path)
    assert back.schema == PROFILE_SCHEMA
    assert back.equals(profile_table(runs))
    assert pq.ParquetFile(path).metadata.num_rows == back.num_rows
    empty = write_profiles(tmp_path / "empty.parquet", [])
    assert pq.read_table(empty).num_rows == 0


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_profile_writer_appends_row_groups_and_renames_at_close(
        tmp_path: Path, runs: list[Rehearsal]) -> None:
    target = tmp_path / "profiles.parquet"
    rows = [profile_table([r]).num_rows for r in runs]
    writer = ProfileWriter(target, group_rows=rows[0] + 1)  # a group every second run
    for k, r in enumerate(runs):
        assert writer.add(k, r) is True
        assert not target.exists()  # filled under a temporary name
    assert writer.add(3, rehearse(load_scenario(CHECKOUT), 9)) is False  # no profile
    temp = [name for name in listing(tmp_path) if name.startswith(".profiles.parquet.")]
    assert len(temp) == 1
    assert writer.close() == target
    assert listing(tmp_path) == ["profiles.parquet"]
    meta = pq.ParquetFile(target).metadata
    assert meta.num_row_groups == 2 and meta.num_rows == sum(rows)
    assert [meta.row_group(g).num_rows for g in range(2)] == [rows[0] + rows[1], rows[2]]
    assert pq.read_table(target).equals(profile_table(runs))
    assert (writer.runs, writer.rows) == (3, sum(rows))


def test_profile_writer_discard_leaves_nothing(tmp_path: Path, runs: list[Rehearsal]) -> None:
    (tmp_path / "profiles.parquet").write_bytes(b"an earlier file")
    writer = ProfileWriter(tmp_path / "profiles.parquet", group_rows=1)
    writer.add(0, runs[0])  # written as a row group at once
    writer.discard()
    writer.discard()  # idempotent
    assert listing(tmp_path) == ["profiles.parquet"]
    assert (tmp_path / "profiles.parquet").read_bytes() == b"an earlier file"


def test_read_profiles_gives_back_the_chosen_runs(tmp_path: Path,
                                                  runs: list[Rehearsal]) -> None:
    path = tmp_path / "p.parquet"
    writer = ProfileWriter(path, group_rows=1)  # one row group per run: stats prune
    for k, r in enumerate(runs):
        writer.add(k, r)
    writer.close()
    back = read_profiles(path, [2, 0, 7])
    assert sorted(back) == [0, 2]  # run 7 has no rows
    for k in (0, 2):
        original = runs[k].profile
        assert original is not None and list(back[k]) == list(PROFILE_COLUMNS)
        for name in PROFILE_COLUMNS:
            got, want = back[k][name], original[name]
            if name == "replicas":  # stored as float64
                want = [None if v is None else float(v) for v in want]
            assert got == want, name
    assert read_profiles(path, []) == {}
    assert read_profiles(write_profiles(tmp_path / "empty.parquet", []), [0]) == {}


def test_system_allocator_is_scoped() -> None:
    before = pa.default_memory_pool().backend_name
    with system_allocator():
        assert pa.default_memory_pool().backend_name == "system"
        buffer = pa.array([1.0, 2.0]).buffers()[1]
    assert pa.default_memory_pool().backend_name == before
    assert buffer.to_pybytes()  # a buffer outlives the switch


# --------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("name,seeds", [
    ("envs/checkout.yaml", range(12)),
    ("envs/payments.yaml", range(4)),
    ("tests/scenarios/irreversible.yaml", range(4)),  # rollback_failed: skipped steps
    ("tests/scenarios/external.yaml", range(4)),  # rollback_ineffective: downtime in verify
])
def test_attribution_sums_to_the_run(name: str, seeds: range) -> None:
    sc = load_scenario(ROOT / name)
    outcomes = set()
    for seed in seeds:
        r = rehearse(sc, seed)
        outcomes.add(r.outcome)
        rows = attribution(r)
        executed = [s.name for s in r.steps if s.status != "skipped"]
        assert [row["step"] for row in rows] == [*executed, "verify"]
        assert sum(row["downtime_s"] for row in rows) == pytest.approx(r.downtime_s, abs=1e-6)
        assert sum(row["failed_requests"] for row in rows) == pytest.approx(
            r.failed_requests, abs=1e-6, rel=1e-9)
        for row in rows:
            assert row["downtime_s"] >= 0 and row["failed_requests"] >= 0
            assert row["duration_s"] >= 0
        if r.downtime_s > 0:
            assert sum(row["downtime_share"] for row in rows) == pytest.approx(1.0, abs=1e-9)
        if r.failed_requests > 0:
            assert sum(row["failed_share"] for row in rows) == pytest.approx(1.0, abs=1e-9)
        verify = rows[-1]
        last_end = max((s.end_s for s in r.steps if s.status != "skipped"),
                       default=r.breach.at_s)
        assert verify["duration_s"] == pytest.approx(r.verify_end_s - last_end)
        assert verify["status"] == r.outcome
        for row, step in zip(rows, (s for s in r.steps if s.status != "skipped")):
            assert row["downtime_s"] == step.span.downtime_s
            assert row["duration_s"] == pytest.approx(step.end_s - step.start_s)
    if "irreversible" in name:
        assert outcomes == {"rollback_failed"}
    if "external" in name:
        assert outcomes == {"rollback_ineffective"}


def test_ineffective_rollback_blames_verification() -> None:
    r = rehearse(load_scenario(ROOT / "tests" / "scenarios" / "external.yaml"), 0)
    assert r.outcome == "rollback_ineffective"
    verify = attribution(r)[-1]
    assert verify["step"] == "verify" and verify["downtime_s"] > 0


def test_attribution_leaves_out_skipped_steps(checkout: Scenario) -> None:
    plan = [(name, None if name == "warm-cache" else settings)
            for name, settings in configured_plan(checkout.procedure)]
    for seed in range(3):
        r = rehearse(checkout, seed, plan=plan)
        assert any(s.status == "skipped" for s in r.steps)
        rows = attribution(r)
        assert "warm-cache" not in [row["step"] for row in rows]
        assert sum(row["downtime_s"] for row in rows) == pytest.approx(r.downtime_s, abs=1e-6)
        assert sum(row["failed_requests"] for row in rows) == pytest.approx(
            r.failed_requests, abs=1e-6, rel=1e-9)
