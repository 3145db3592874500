"""``shadowrl calibrate``: fit the simulator to the real shadow (docs/calibration.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from shadowrl.cli.commands import JSON_HELP
from shadowrl.cli.render import bad_input_exits_2, emit_json, err, fail, out, progress_bars

CALIBRATE_HELP = (
    "Fit the simulator to the real shadow: a load sweep, rehearsals of random procedures "
    "(fitted on) and held-out rehearsals with A/A repeats (never fitted on). Writes "
    "params.yaml, scenario.yaml (loads them), report.html and report.json to --out; "
    "resumes an interrupted calibration in the same --out. Exit 0 when the calibrated "
    "simulator is within 15 % (or the A/A noise) of the real shadow on the held-out "
    "rehearsals, 1 when it is not, 2 on bad input.")


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"--levels: a comma-separated list of load multiples, got {text!r}")
    if len(values) < 2:
        fail("--levels: at least two load levels")
    return values


def calibrate_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="Scenario YAML."),
    backend: str = typer.Option("docker", help="The real shadow to fit to (docker)."),
    out_dir: Path = typer.Option(Path("out/calibrate"), "--out",
                                 help="Output folder (an interrupted run resumes in it)."),
    seed: int = typer.Option(0, help="First seed of the rehearsals."),
    fit_runs: int = typer.Option(6, min=0, help="Rehearsals of random procedures to fit on."),
    heldout_runs: int = typer.Option(4, min=1, help="Held-out rehearsals (not fitted on)."),
    aa_runs: int = typer.Option(2, min=0, help="Held-out rehearsals repeated: A/A noise."),
    levels: str = typer.Option(",".join(f"{x:g}" for x in (0.4, 0.7, 1.0, 1.3, 1.8)),
                               help="Load sweep levels, multiples of the scenario's load."),
    time_compression: float | None = typer.Option(
        None, min=1.0, help="Override the scenario's shadow.time_compression."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fit the simulator to the real shadow (CALIBRATE_HELP)."""
    from shadowrl.app.calibrate import CalibrateRequest, calibrate

    request = CalibrateRequest(
        file=file, backend=backend, out=out_dir, seed=seed, fit_runs=fit_runs,
        heldout_runs=heldout_runs, aa_runs=aa_runs, levels=_levels(levels),
        time_compression=time_compression,
        command=" ".join(["shadowrl", *sys.argv[1:]]))
    try:
        with bad_input_exits_2(), progress_bars() as on_progress:
            result = calibrate(request, on_progress=on_progress,
                               on_log=lambda m: err.print(m, markup=False))
    except KeyboardInterrupt:
        kept = len(list((out_dir / "experiments").glob("*.json")))
        err.print(f"interrupted: {kept} finished experiments kept in {out_dir / 'experiments'}"
                  f"; run the same command to resume", markup=False)
        raise typer.Exit(130) from None
    if json_out:
        emit_json(result)
    else:
        for measure, e in result.error["measures"].items():
            v = result.verdict["measures"][measure]
            out.print(f"{measure:<13} real {e['real_mean']:>10.1f}  sim before "
                      f"{e['sim_before_mean']:>10.1f} ({_pct(e['error_before'])})  after "
                      f"{e['sim_after_mean']:>10.1f} ({_pct(e['error_after'])})  A/A noise "
                      f"{_pct(e['aa_noise'])}  {'ok' if v['within'] else 'NOT within'} "
                      f"{v['allowed']:.0%}", markup=False)
        for key in ("params", "scenario", "report_html", "report_json"):
            out.print(f"{key}: {getattr(result, key)}", markup=False)
        out.print(f"experiments: {result.experiments_run} run, "
                  f"{result.experiments_reused} reused", markup=False)
    if not result.verdict["within"]:
        raise typer.Exit(1)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


