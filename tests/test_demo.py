"""The demo runner: one output folder per scenario, the stages it runs, and which registered
version it evaluates and exports."""

from __future__ import annotations

import json
from pathlib import Path

from shadowrl.demo import (
    after_training,
    closing_message,
    default_out,
    stages,
    trained_model_uri,
)


def test_each_scenario_gets_its_own_output_folder() -> None:
    assert default_out("envs/checkout.yaml") == Path("out/demo/checkout")
    assert default_out("envs/payments.yaml") == Path("out/demo/payments")


def test_stages_write_under_the_output_folder() -> None:
    out = Path("out/demo/payments")
    plan = [*stages("envs/payments.yaml", "experiments/payments-maskable-ppo.yaml", out, True),
            *after_training("envs/payments.yaml", "models:/payments-rollback/3", out, True)]
    assert [s[0] for s in plan] == ["validate", "simulate", "rehearse", "optimize", "train",
                                    "evaluate", "export"]
    written = [s[s.index("--out") + 1] for s in plan if "--out" in s]
    assert written and all(Path(w).is_relative_to(out) for w in written)
    assert "models:/payments-rollback/3" in plan[-1]


def test_the_champion_is_used_when_there_is_one_else_the_new_version() -> None:
    def result(champion: str) -> str:
        return json.dumps({"model": "checkout-rollback", "version": "4",
                           "champion": {"champion_version": champion}})

    assert trained_model_uri(result("2")) == "models:/checkout-rollback@champion"
    assert trained_model_uri(result("")) == "models:/checkout-rollback/4"


def test_the_closing_message_says_the_workflow_is_the_best_static_procedure() -> None:
    out = Path("out/demo/payments")
    text = closing_message(out, "models:/payments-rollback@champion")
    assert (f"{out / 'rollback-workflow.yaml'} is the best static procedure found while "
            f"training models:/payments-rollback@champion") in text
    assert "cannot be exported as a fixed procedure yet" in text
