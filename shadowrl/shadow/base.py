"""The shadow backend protocol: what the tester, the env and the optimizer drive.

A backend is one shadow of the deployment. The simulator implements it in simulated time with
snapshots; a real backend (containers) works in wall-clock time, may not support snapshots,
and its steps can fail or hang, so every call returns what actually happened.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from shadowrl.core.injection import Injection
from shadowrl.core.results import Breach, Metrics, Span, StepResult, VerifyResult
from shadowrl.core.spec import Scenario, Step


@runtime_checkable
class ShadowBackend(Protocol):
    """One shadow of a deployment. Times are seconds since the shadow launched."""

    name: str
    supports_snapshot: bool
    scenario: Scenario

    def launch(self, seed: int) -> None:
        """Start a healthy shadow of the live deployment."""

    def inject(self, injection: Injection) -> None:
        """Schedule the deviation; it starts at ``injection.onset_s``."""

    def now(self) -> float: ...

    def run_until_breach(self, max_s: float) -> Breach | None:
        """Advance until an SLO rule fires (``for``/``interval`` semantics) or ``max_s``."""

    def run_step(self, step: Step, settings: dict[str, Any]) -> StepResult:
        """Run one procedure step to completion (or failure) and report what it cost."""

    def advance(self, seconds: float) -> Span: ...

    def verify(self, hold_s: float, deadline_s: float) -> VerifyResult:
        """Advance until every rule holds for ``hold_s`` or ``deadline_s`` passes."""

    def metrics(self) -> Metrics: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...
