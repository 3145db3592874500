"""Golden outputs of the public JSON contract, recorded before a refactor.

``python tests/golden/goldens.py`` rewrites ``tests/golden/*.json``; ``test_goldens.py``
recomputes them and asserts the outputs are byte-identical. Regenerate only in a commit that
changes behaviour on purpose and says why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).resolve().parent
SCENARIOS = ("checkout", "payments", "search")
SEEDS = range(1, 6)
POLICIES = ("configured", "greedy", "oracle")
EVAL_EPISODES = 20
REHEARSE_RUNS = 50


def _run(args: list[str]) -> Any:
    """One CLI call in-process, from the repository root: its ``--json`` object, or its
    exit code and error text when it refuses (that is part of the contract too)."""
    from typer.testing import CliRunner

    from shadowrl.cli.main import app

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    if result.exit_code != 0:
        return {"exit_code": result.exit_code, "stderr": result.stderr}
    return json.loads(result.stdout)


def incidents(scenario: str) -> list[str]:
    import yaml

    data = yaml.safe_load((ROOT / "envs" / f"{scenario}.yaml").read_text())
    return [i["name"] for i in data["incidents"]]


def compute(scenario: str, part: str) -> dict[str, Any]:
    """One part (``simulate``, ``rehearse`` or ``evaluate``) of a scenario's goldens."""
    path = f"envs/{scenario}.yaml"
    if part == "simulate":
        return {f"{name}@{seed}": _run(["simulate", path, "--incident", name, "--seed", str(seed),
                                            "--json"])
                for name in incidents(scenario) for seed in SEEDS}
    if part == "rehearse":
        return _run(["rehearse", path, "--runs", str(REHEARSE_RUNS), "--json"])
    if part == "evaluate":
        return {policy: _run(["evaluate", path, "--policy", policy, "--episodes",
                              str(EVAL_EPISODES), "--json"])
                for policy in POLICIES}
    raise ValueError(part)


def golden_path(scenario: str, part: str) -> Path:
    return GOLDEN_DIR / f"{scenario}.{part}.json"


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main() -> None:
    for scenario in SCENARIOS:
        for part in ("simulate", "rehearse", "evaluate"):
            golden_path(scenario, part).write_text(render(compute(scenario, part)))
            print(f"wrote {golden_path(scenario, part)}", file=sys.stderr)


if __name__ == "__main__":
    main()
