"""Many rehearsals in a row: the output folder they fill as they finish, and Ctrl-C.

Run ``i`` uses seed ``seed + i``, so two procedures rehearsed with the same seed face the same
incidents. Progress goes to an ``on_run`` callback; drawing it is the caller's business.

With an :class:`OutputFolder`, every finished run is written at once (its alerts appended to
``alerts.jsonl``, its profile rows to the Parquet file being filled) and memory keeps only
its compact record (:class:`Compactor`): a few KB per run instead of megabytes.
:meth:`OutputFolder.finish` then writes ``alerts.json``, ``profiles.parquet`` and
``report.html``, and :meth:`OutputFolder.commit_summary` ``summary.json`` last: each appears
under its final name only when complete. A write that fails (a full disk) stops the
campaign with :class:`OutputError`, keeping what was written.

Ctrl-C (:class:`CtrlC`): the first press stops the runs, keeps the finished ones and says so
on stderr at once; the outputs are then written with SIGINT shielded, and later presses only
print a reminder. A run being recorded when Ctrl-C comes is recorded completely first.
docs/rehearsal-outputs.md describes the folder.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shadowrl.analysis.summary import RehearsalSummary, ResultModel
from shadowrl.core.atomic import RecordLog, atomic_write_json, atomic_write_json_array
from shadowrl.core.plan import Plan
from shadowrl.core.spec import Procedure, Scenario
from shadowrl.rehearsal.alerts import Alert, dispatch, sinks_from_options
from shadowrl.rehearsal.deviation import DeviationSimulator, HistoryModel
from shadowrl.rehearsal.runner import Rehearsal, rehearse

if TYPE_CHECKING:  # pyarrow is imported where profiles are written
    from shadowrl.analysis.profile import ProfileWriter

OUTPUT_NAMES = {"summary": "summary.json", "profiles": "profiles.parquet",
                "report": "report.html", "alerts": "alerts.json"}
ALERT_LOG = "alerts.jsonl"  # one alert record per line, appended as runs finish
PAUSE_ENV = "SHADOWRL_TEST_PAUSE_WRITE"  # test hook, see _pause_for_tests
PAUSE_LIMIT_S = 60.0


@dataclass
class Campaign:
    """The finished runs (compact records when streamed to an output folder: no profile),
    whether Ctrl-C cut the campaign short, and the output failure that stopped it."""

    runs: list[Rehearsal] = field(default_factory=list)
    interrupted: bool = False
    failure: OutputError | None = None


class OutputFiles(ResultModel):
    """The files of a rehearsal output folder."""

    summary: str
    profiles: str
    report: str
    alerts: str


class OutputError(Exception):
    """The output folder cannot be used or a file in it cannot be written; the message names
    the file and the reason (``cannot write profiles.parquet: No space left on device``)."""


def _reason(exc: BaseException) -> str:
    """An OSError as a person reads it (pyarrow's messages bury the errno's text)."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__


def run_alerts(k: int, r: Rehearsal) -> list[Alert]:
    """Run ``r``'s alerts, tagged with its index ``k`` in the campaign."""
    return [dataclasses.replace(a, run=k) for a in r.alerts]


def all_alerts(runs: Sequence[Rehearsal]) -> list[Alert]:
    return [a for k, r in enumerate(runs) for a in run_alerts(k, r)]


# --------------------------------------------------------------------------- Ctrl-C


class CtrlC:
    """What SIGINT does while a campaign runs and then writes its outputs.

    While runs go on, the first press stops them: it raises ``KeyboardInterrupt`` (caught by
    :func:`run_campaign`) and prints ``interrupted: writing N finished runs to DIR...`` at
    once. While a finished run is being recorded (:meth:`holding`) the press waits until
    the record is complete. Once the runs are over (:meth:`finishing`), presses no longer
    raise: the first prints the same acknowledgement, later ones ``still writing N finished
    runs; please wait``. ``pressed`` counts the presses.

    Use as a context manager around the runs and the writing; the handler is installed only
    in the main thread (elsewhere SIGINT is not ours to handle) and the previous one is put
    back on exit. Notices are written straight to file descriptor 2: they come from the
    signal handler, which must not use a buffered stream another write may be holding.
    """

    def __init__(self, where: Path | None = None) -> None:
        self.where = where
        self.pressed = 0
        self.done = 0  # finished runs so far; run_campaign keeps it current
        self._mode = "run"  # run | hold | finish
        self._held = False
        self._acknowledged = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    @property
    def interrupted(self) -> bool:
        return self.pressed > 0

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.pressed += 1
        if self._mode == "hold":
            self._held = True
            return
        if self._mode == "run":
            self.stopped()
            raise KeyboardInterrupt
        self._say(self._still() if self._acknowledged else self._ack())

    def stopped(self) -> None:
        """The runs stopped on Ctrl-C: acknowledge it (once) and absorb later presses."""
        self._mode = "finish"
        if not self._acknowledged:
            self._say(self._ack())

    def finishing(self) -> None:
        """The runs are over: from now on Ctrl-C never raises."""
        self._mode = "finish"

    @contextmanager
    def holding(self) -> Iterator[None]:
        """A block Ctrl-C must not cut (recording a finished run); a press during it stops
        the runs right after it."""
        if self._mode != "run":
            yield
            return
        self._mode = "hold"
        try:
            yield
        finally:
            if self._mode == "hold":
                self._mode = "run"
            if self._held:
                self._held = False
                self.stopped()
                raise KeyboardInterrupt

    def _ack(self) -> str:
        self._acknowledged = True
        if self.where is None:
            return f"interrupted: summarising {self.done} finished runs..."
        return f"interrupted: writing {self.done} finished runs to {self.where}..."

    def _still(self) -> str:
        verb = "writing" if self.where is not None else "summarising"
        return f"still {verb} {self.done} finished runs; please wait"

    @staticmethod
    def _say(message: str) -> None:
        # on a terminal, clear the line a progress bar may be drawing first
        prefix = "\r\x1b[2K" if os.isatty(2) else ""
        try:
            os.write(2, f"{prefix}{message}\n".encode())
        except OSError:
            pass


# --------------------------------------------------------------------------- output folder


class OutputFolder:
    """A campaign's output folder, filled as runs finish (see the module docstring).

    :meth:`open` checks the folder before any work. :meth:`record` appends one finished
    run; after a failure (``failure``) it records nothing more. :meth:`finish` and
    :meth:`commit_summary` write the final files; :meth:`abandon` drops the unfinished
    profile file and keeps everything complete. ``kept`` lists the files in place, for
    messages. A context manager: leaving it (:meth:`close`) abandons what is unfinished.
    While open, Arrow allocates from the system allocator, which gives memory back
    (``analysis.profile.system_allocator``).
    """

    def __init__(self, out_dir: Path) -> None:
        # Arrow picks its process-wide allocator once, at first use. Unless the user chose
        # one, take the system allocator: it gives freed memory back where mimalloc keeps
        # it (35 MB less peak over 2,000 runs). No effect once Arrow is in use.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        from shadowrl.analysis.profile import ProfileWriter, system_allocator

        self.dir = out_dir
        self.paths = {k: out_dir / name for k, name in OUTPUT_NAMES.items()}
        self.kept: list[str] = []
        self.failure: OutputError | None = None
        self.recorded = 0  # runs recorded
        self._profiles: ProfileWriter | None = None
        self._resources = ExitStack()
        self._resources.enter_context(system_allocator())
        try:
            self._log = self._guard("write", ALERT_LOG,
                                    lambda: RecordLog(out_dir / ALERT_LOG))
            self._resources.callback(self._log.close)
            self.kept.append(ALERT_LOG)
            self._profiles = self._guard("write", OUTPUT_NAMES["profiles"],
                                         lambda: ProfileWriter(self.paths["profiles"]))
        except BaseException:
            self._resources.close()
            raise

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, out_dir: str | os.PathLike[str]) -> OutputFolder:
        """Check that ``out_dir`` is (or can be made) a writable folder, create it, and
        remove the outputs of an earlier campaign there, so the folder never mixes two.
        Raises :class:`OutputError` (not a folder, cannot be created, not writable)."""
        path = Path(out_dir)
        if path.exists() and not path.is_dir():
            raise OutputError("exists and is not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder: {_reason(exc)}") from None
        probe = path / f".shadowrl-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"the folder is not writable: {_reason(exc)}") from None
        for name in (*OUTPUT_NAMES.values(), ALERT_LOG):
            # the file itself, and the hidden temporaries of a campaign that was killed
            # (SIGKILL) before it could rename or discard them
            for stale in (path / name, *path.glob(f".{glob.escape(name)}.*")):
                if stale.is_file() or stale.is_symlink():
                    try:
                        stale.unlink()
                    except OSError as exc:
                        raise OutputError(f"cannot replace {name}: {_reason(exc)}") from None
        return cls(path)

    def _guard(self, verb: str, name: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except OSError as exc:
            raise OutputError(f"cannot {verb} {name}: {_reason(exc)}") from None

    def record(self, k: int, r: Rehearsal) -> bool:
        """Append run ``k``'s alerts and profile rows; False (and ``failure`` set, the run
        not recorded) when a write fails."""
        if self.failure is not None:
            return False
        lines = "".join(json.dumps(a.to_record()) + "\n" for a in run_alerts(k, r))
        profiles = self._profiles
        try:
            # profile rows first: when the alert line fails, the profile file is dropped
            # anyway, so alerts.jsonl always covers exactly the recorded runs
            if profiles is not None:
                self._guard("write", OUTPUT_NAMES["profiles"], lambda: profiles.add(k, r))
            if lines:
                self._guard("write", ALERT_LOG, lambda: self._log.append(lines.encode()))
        except OutputError as exc:
            self.failure = exc
            return False
        self.recorded += 1
        return True

    def finish(self, scenario: Scenario, summary: RehearsalSummary,
               runs: Sequence[Rehearsal], command: str) -> None:
        """``alerts.json``, ``profiles.parquet`` and ``report.html``, in that order (alerts
        matter most), each renamed into place when complete. ``runs`` are the recorded
        runs' compact records (:class:`Compactor`): the report's example runs get their
        profiles back from the Parquet file. Raises :class:`OutputError` at the first file
        that fails."""
        from shadowrl.analysis.profile import read_profiles
        from shadowrl.analysis.report import pick_examples, write_report

        self._guard("close", ALERT_LOG, self._log.close)
        self._write_alerts()
        _pause_for_tests()
        if self._profiles is not None:
            writer, self._profiles = self._profiles, None
            self._guard("write", OUTPUT_NAMES["profiles"], writer.close)
            self.kept.append(OUTPUT_NAMES["profiles"])
        index = {id(r): k for k, r in enumerate(runs)}
        picked = [index[id(e.run)] for e in pick_examples(runs) if id(e.run) in index]
        profiles = self._guard("read", OUTPUT_NAMES["profiles"],
                               lambda: read_profiles(self.paths["profiles"], picked))
        with_examples = list(runs)
        for k, profile in profiles.items():
            with_examples[k] = dataclasses.replace(runs[k], profile=profile)
        self._guard("write", OUTPUT_NAMES["report"], lambda: write_report(
            self.paths["report"], scenario, summary, with_examples, command))
        self.kept.append(OUTPUT_NAMES["report"])

    def commit_summary(self, summary: BaseModel) -> OutputFiles:
        """``summary.json`` (the summary without its ``outputs``), written last: its
        presence says the folder is complete."""
        data = summary.model_dump(mode="json")
        data.pop("outputs", None)
        self._guard("write", OUTPUT_NAMES["summary"],
                    lambda: atomic_write_json(self.paths["summary"], data))
        self.kept.append(OUTPUT_NAMES["summary"])
        return OutputFiles(**{k: str(v) for k, v in self.paths.items()})

    def _write_alerts(self) -> None:
        """``alerts.json``: the records of ``alerts.jsonl`` as one array, read a line at a
        time (a long campaign has hundreds of thousands)."""
        def records() -> Iterator[Any]:
            with open(self.dir / ALERT_LOG, encoding="utf-8") as log:
                for line in log:
                    yield json.loads(line)

        self._guard("write", OUTPUT_NAMES["alerts"],
                    lambda: atomic_write_json_array(self.paths["alerts"], records()))
        self.kept.append(OUTPUT_NAMES["alerts"])

    def salvage(self) -> None:
        """After a failure: drop the unfinished profile file (freeing its space), then try
        to write ``alerts.json`` (the alerts of every recorded run) anyway."""
        self.abandon()
        if OUTPUT_NAMES["alerts"] not in self.kept:
            try:
                self._write_alerts()
            except OutputError:
                pass

    def abandon(self) -> None:
        """Drop the unfinished profile file and close the alert log (idempotent)."""
        if self._profiles is not None:
            writer, self._profiles = self._profiles, None
            writer.discard()
        try:
            self._log.close()
        except OSError:
            pass

    def close(self) -> None:
        """:meth:`abandon` what is unfinished and release the folder's resources (the
        alert log, Arrow's allocator setting); idempotent. Complete files stay."""
        try:
            self.abandon()
        finally:
            self._resources.close()

    def has(self, key: str) -> bool:
        return OUTPUT_NAMES[key] in self.kept


def _pause_for_tests() -> None:
    """Test hook: with ``$SHADOWRL_TEST_PAUSE_WRITE=FILE`` the write phase creates FILE,
    then waits (at most a minute) until it is removed, so a test can press Ctrl-C while
    the outputs are being written. Unset, it costs one environment lookup."""
    flag = os.environ.get(PAUSE_ENV)
    if not flag:
        return
    Path(flag).touch()
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)


# --------------------------------------------------------------------------- runs


class Compactor:
    """What a campaign keeps of a recorded run: everything the summary and the report read
    (outcome, measures, steps with their spans and settings, alerts), about 7 KB in place of
    megabytes. Dropped: the profile (it is in the Parquet file), the span before the breach
    (only the alert rules read it, and they have run) and the per-source error counts of
    the run and of its steps (in the alerts' messages already); step settings are shared
    with the earlier runs that used the same ones."""

    def __init__(self) -> None:
        self._settings: dict[str, dict[str, Any]] = {}
        self._no_sources: dict[str, float] = {}

    def __call__(self, r: Rehearsal) -> Rehearsal:
        steps = []
        for s in r.steps:
            key = json.dumps(s.settings, sort_keys=True, default=repr)
            steps.append(dataclasses.replace(
                s, settings=self._settings.setdefault(key, s.settings),
                span=dataclasses.replace(s.span, errors_by_source=self._no_sources)))
        return dataclasses.replace(r, profile=None, steps=steps,
                                   breach=dataclasses.replace(r.breach, before=None),
                                   errors_by_source=self._no_sources)


def run_campaign(scenario: Scenario, n_runs: int, seed: int = 0, *,
                 procedure: Procedure | None = None, plan: Plan | None = None,
                 history: HistoryModel | None = None, at: str = "now",
                 record_profile: bool = False,
                 rehearse_fn: Callable[..., Rehearsal] = rehearse,
                 on_run: Callable[[int], None] | None = None,
                 output: OutputFolder | None = None,
                 ctrl_c: CtrlC | None = None, compact: bool = False,
                 backend: str = "sim") -> Campaign:
    """Rehearse ``n_runs`` incidents; Ctrl-C stops after the finished runs. ``on_run`` gets
    the number of finished runs after each one.

    With ``output``, each run is recorded there as it finishes and kept in memory as a
    compact record (:class:`Compactor`); a failed write stops the campaign
    (``Campaign.failure``). ``compact`` keeps compact records without an output folder
    too (a summary needs no more). ``ctrl_c`` (an
    entered :class:`CtrlC`) learns how many runs are done and protects each recording.
    ``backend`` names the shadow every run uses (``sim`` or ``docker``).
    """
    deviation = DeviationSimulator(scenario, history=history, at=at)  # type: ignore[arg-type]
    campaign = Campaign()
    compactor = Compactor()
    holding = ctrl_c.holding if ctrl_c is not None else nullcontext
    on_backend: dict[str, Any] = {} if backend == "sim" else {"backend": backend}
    try:
        for i in range(n_runs):
            r = rehearse_fn(scenario, seed + i, procedure=procedure, plan=plan,
                            deviation=deviation, record_profile=record_profile, **on_backend)
            with holding():
                if output is not None and not output.record(len(campaign.runs), r):
                    campaign.failure = output.failure
                    break
                if output is not None or compact:
                    r = compactor(r)
                campaign.runs.append(r)
                if ctrl_c is not None:
                    ctrl_c.done = len(campaign.runs)
            if on_run is not None:
                on_run(i + 1)
    except KeyboardInterrupt:
        campaign.interrupted = True
        if ctrl_c is not None:
            ctrl_c.stopped()
    if ctrl_c is not None:
        ctrl_c.finishing()
    return campaign


# --------------------------------------------------------------------------- alerts


def deliver_alerts(alerts: Sequence[Alert], webhook: str | None,
                   fallback: Path | None) -> list[str]:
    """Send ``alerts`` to the webhook if any (``webhook`` or ``$SHADOWRL_ALERT_WEBHOOK``);
    when it fails they go to ``fallback`` (if given). One error string per failed
    delivery."""
    return dispatch(list(alerts), sinks_from_options(webhook, None, False), fallback)


def send_alerts(alerts: Sequence[Alert], out_dir: Path | None,
                webhook: str | None) -> list[str]:
    """``alerts.json`` in the output folder (always, atomically), then the webhook if any.

    A failing webhook never loses alerts: without an output folder they go to
    ``shadowrl-alerts.json`` in the working directory.
    """
    if out_dir is not None:
        atomic_write_json(out_dir / "alerts.json", [a.to_record() for a in alerts])
    fallback = None if out_dir is not None else Path("shadowrl-alerts.json")
    return deliver_alerts(alerts, webhook, fallback)


# --------------------------------------------------------------------------- in memory


def write_outputs(out_dir: Path, scenario: Scenario, summary: RehearsalSummary,
                  runs: Sequence[Rehearsal], command: str) -> OutputFiles:
    """summary.json, profiles.parquet and report.html of runs held in memory (with their
    profiles), each written atomically; alerts.json is :func:`send_alerts`'s. For a few
    runs (``train`` rehearses twenty); campaigns stream through :class:`OutputFolder`."""
    from shadowrl.analysis.profile import write_profiles
    from shadowrl.analysis.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / name for k, name in OUTPUT_NAMES.items()}
    write_profiles(paths["profiles"], runs)
    write_report(paths["report"], scenario, summary, runs, command)
    atomic_write_json(paths["summary"], summary.model_dump(mode="json"))
    return OutputFiles(**{k: str(v) for k, v in paths.items()})
