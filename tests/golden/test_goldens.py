"""The public JSON outputs are byte-identical to the recorded goldens (see goldens.py)."""

from __future__ import annotations

import pytest

from tests.golden.goldens import SCENARIOS, compute, golden_path, render


@pytest.mark.slow
@pytest.mark.parametrize("part", ["simulate", "rehearse", "evaluate"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_outputs_match_goldens(scenario: str, part: str) -> None:
    expected = golden_path(scenario, part).read_text()
    assert render(compute(scenario, part)) == expected
