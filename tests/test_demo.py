"""The demo runner: one output folder per scenario, and the stages it runs."""

from __future__ import annotations

from pathlib import Path

from shadowrl.demo import default_out, stages


def test_each_scenario_gets_its_own_output_folder() -> None:
    assert default_out("envs/checkout.yaml") == Path("out/demo/checkout")
    assert default_out("envs/payments.yaml") == Path("out/demo/payments")


def test_stages_write_under_the_output_folder() -> None:
    out = Path("out/demo/payments")
    plan = stages("envs/payments.yaml", "experiments/payments-maskable-ppo.yaml", out, True)
    assert [s[0] for s in plan] == ["validate", "simulate", "rehearse", "optimize", "train",
                                    "evaluate", "export"]
    written = [s[s.index("--out") + 1] for s in plan if "--out" in s]
    assert written and all(Path(w).is_relative_to(out) for w in written)
    assert "models:/payments-rollback@champion" in plan[-1]
