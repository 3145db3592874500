"""The main job of a fresh checkout (`make demo`): every stage of shadowrl on one scenario.

Runs the real commands one after another, printing each, with the embedded defaults: the
simulated shadow, a local Ray (2 shadow replicas for training), and the sqlite MLflow store
``./mlflow.db`` in the working directory. ``--quick`` shrinks the rehearsal and evaluation
budgets (training follows the experiment file).

Last, when Docker is reachable or can be started here, the real-shadow stage: the configured
and the optimized procedure rehearsed on the real (Docker) shadow on the same incidents,
beside the simulator's figures for the same seeds; then the live-link stage: ``shadowrl
sync`` reads a stand-in "live" deployment (idle containers with compose's labels on the same
daemon, apart from the shadow) into a new scenario, the simulator rehearses it, and after a
new live release ``sync --check`` reports the drift (exit 1, the expected outcome). Both
Docker stages are skipped by ``--no-real``; without Docker they say how to enable them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shadowrl.live.sync.demo_deployment import DemoDeployment


def stages(scenario: str, experiment: str, out: Path, quick: bool) -> list[list[str]]:
    """The commands before and including training."""
    runs = "10" if quick else "50"
    episodes = "10" if quick else "50"
    return [
        ["validate", scenario],
        ["simulate", scenario, "--seed", "1"],
        ["rehearse", scenario, "--runs", runs, "--out", str(out / "rehearsal")],
        ["optimize", scenario, "--method", "search", "--episodes", episodes, "--out",
         str(out / "optimize")],
        ["train", experiment, "--out", str(out / "train"), "--json"],
    ]


def after_training(scenario: str, model_uri: str, out: Path, quick: bool) -> list[list[str]]:
    """The commands that use the trained policy: evaluate it and export its procedure."""
    episodes = "10" if quick else "50"
    return [
        ["evaluate", scenario, "--policy", model_uri, "--episodes", episodes],
        ["export", model_uri, "--format", "argo", "--out", str(out / "rollback-workflow.yaml")],
    ]


def trained_model_uri(train_json: str) -> str:
    """The champion when there is one, else the version this run registered: promotion
    needs evidence, so a short training may register a version that is not promoted."""
    result = json.loads(train_json)
    model = result["model"]
    if result["champion"]["champion_version"]:
        return f"models:/{model}@champion"
    return f"models:/{model}/{result['version']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="envs/checkout.yaml")
    parser.add_argument("--experiment", default="experiments/checkout-maskable-ppo.yaml",
                        help="the experiment `train` runs (2 Ray replicas, ./mlflow.db)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: out/demo/SCENARIO-NAME)")
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    parser.add_argument("--no-real", action="store_true",
                        help="skip the real-shadow and live-link stages (Docker)")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.scenario)
    if out.exists() and any(out.iterdir()):
        print(f"replacing the previous demo's outputs in {out}", flush=True)
    exe = [sys.executable, "-m", "shadowrl"]
    train_json = ""
    for stage in stages(args.scenario, args.experiment, out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        done = subprocess.run([*exe, *stage], stdout=subprocess.PIPE if "--json" in stage
                              else None, text=True, check=False)
        if done.returncode != 0:
            print(f"stage failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
        if "--json" in stage:
            train_json = done.stdout
            print(train_json, end="", flush=True)
    model_uri = trained_model_uri(train_json)
    for stage in after_training(args.scenario, model_uri, out, args.quick):
        print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
        code = subprocess.call([*exe, *stage])
        if code != 0:
            print(f"stage failed with exit code {code}", file=sys.stderr)
            return code
    if not args.no_real:
        code = real_shadow_stage(args.scenario, out, exe)
        if code != 0:
            return code
        code = live_link_stage(out, exe)
        if code != 0:
            return code
    print(closing_message(out, model_uri))
    return 0


REAL_SEED = "1"
REAL_RUNS = "2"


def real_stages(scenario: str, out: Path, backend: str) -> list[list[str]]:
    """The configured and the optimized procedure on the same incidents (seeds 1-2)."""
    real = out / "real"
    return [
        ["rehearse", scenario, "--backend", backend, "--runs", REAL_RUNS, "--seed", REAL_SEED,
         "--out", str(real / f"{backend}-configured")],
        ["rehearse", scenario, "--backend", backend, "--runs", REAL_RUNS, "--seed", REAL_SEED,
         "--procedure", str(out / "optimize" / "procedure.yaml"),
         "--out", str(real / f"{backend}-optimized")],
    ]


def docker_reachable() -> str | None:
    """None when a Docker daemon answers (or was started); else how to enable the stage."""
    try:
        from shadowrl.shadow.docker.daemon import DockerUnavailable, connect
    except ImportError as exc:
        return f"the Docker SDK is missing ({exc}): pip install -e '.[docker]'"
    try:
        connect(start=True).close()
    except DockerUnavailable as exc:
        return str(exc)
    return None


def skipping(stage: str, why: str) -> str:
    """Why a Docker stage is skipped, and how to enable it."""
    return (f"\nSkipping the {stage} stage: {why}\nTo enable it: on Debian, as root, "
            f"`apt-get install -y docker.io debootstrap` (or point DOCKER_HOST at a daemon), "
            f"then run `make demo` again; see docs/docker-shadow.md.")


def real_shadow_stage(scenario: str, out: Path, exe: list[str]) -> int:
    """Rehearse both procedures on the real shadow and on the simulator, same seeds, and
    print their figures side by side."""
    why = docker_reachable()
    if why is not None:
        print(skipping("real-shadow", why), flush=True)
        return 0
    print("\nThe real shadow: the configured and the optimized procedure on the same "
          "incidents, in Docker and in the simulator (the first real run builds the images, "
          "about 70 s).", flush=True)
    for backend in ("docker", "sim"):
        for stage in real_stages(scenario, out, backend):
            print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
            code = subprocess.call([*exe, *stage], stdout=subprocess.DEVNULL,
                                   env={**os.environ})
            if code != 0:
                print(f"stage failed with exit code {code}", file=sys.stderr)
                return code
    print("\n" + real_vs_sim_table(out / "real"), flush=True)
    return 0


def real_vs_sim_table(folder: Path) -> str:
    """Means over the runs of each (procedure, backend), from the summaries."""
    head = (f"{'procedure':<11} {'backend':<7} {'recovered':>9} {'downtime':>9} "
            f"{'bad requests':>13} {'budget burn':>12}")
    lines = [head, "-" * len(head)]
    for procedure in ("configured", "optimized"):
        for backend in ("sim", "docker"):
            s = json.loads((folder / f"{backend}-{procedure}" / "summary.json").read_text())
            lines.append(f"{procedure:<11} {backend:<7} "
                         f"{s['outcomes']['recovered']:>4} of {s['runs']:<2} "
                         f"{s['downtime_s']['mean']:>8.0f}s {s['bad_requests']['mean']:>13.0f} "
                         f"{s['budget_burn']['mean']:>12.2%}")
    return "\n".join(lines)


LIVE_RUNS = "3"
DRIFT_EXIT = 1  # what `shadowrl sync --check` exits with on drift
LIVE_SHOP = "web v1 (2 replicas, the edge) -> api v7 (2) -> db"
LIVE_RELEASE = "v2"


def live_stages(out: Path, project: str) -> list[list[str]]:
    """Sync a new scenario from the live project, rehearse it on the simulator, and check
    it against live again (after a release: drift)."""
    live = out / "live"
    scenario = str(live / "scenario.yaml")
    source = f"docker:{project}"
    return [
        ["sync", source, "--scenario", scenario],
        ["rehearse", scenario, "--runs", LIVE_RUNS, "--out", str(live / "rehearsal")],
        ["sync", source, "--scenario", scenario, "--check"],
    ]


def expected_exit(stage: list[str]) -> int:
    """The exit code that means the stage worked: drift for `sync --check` (it runs after a
    live release), else 0."""
    return DRIFT_EXIT if stage[0] == "sync" and "--check" in stage else 0


def open_live_deployment() -> tuple[DemoDeployment, str]:
    """An empty stand-in live deployment on the daemon the real shadow uses (its app image is
    cached by then), and that daemon's address for the commands to read it through."""
    from shadowrl.live.sync.demo_deployment import DemoDeployment
    from shadowrl.shadow.docker.daemon import connect, docker_host
    from shadowrl.shadow.docker.images import ensure_images

    client = connect(start=True)
    try:
        image = ensure_images(client).app
        live = DemoDeployment(client, image, f"demo-{secrets.token_hex(3)}")
    except BaseException:
        client.close()
        raise
    return live, docker_host(client)


def live_link_stage(out: Path, exe: list[str]) -> int:
    """`shadowrl sync` against a stand-in live deployment: a new scenario, rehearsed on the
    simulator; a live release, reported as drift by `sync --check`. The live containers are
    removed at the end, also on failure or Ctrl-C."""
    why = docker_reachable()
    if why is not None:
        print(skipping("live-link", why), flush=True)
        return 0
    print(f"\nThe live link: `shadowrl sync` reads a live deployment (idle containers with "
          f"compose's labels, apart from the shadow: {LIVE_SHOP}) into a new scenario, the "
          f"simulator rehearses it, then a new web release shows as drift.", flush=True)
    started = time.monotonic()
    (out / "live").mkdir(parents=True, exist_ok=True)
    (out / "live" / "scenario.yaml").unlink(missing_ok=True)  # created anew on each demo
    live, host = open_live_deployment()
    try:
        live.start_shop("v1")
        print(f"live: compose project {live.project}: {LIVE_SHOP}", flush=True)
        for stage in live_stages(out, live.project):
            expected = expected_exit(stage)
            if expected == DRIFT_EXIT:
                live.release_web(LIVE_RELEASE)
                print(f"\nlive: web released at {LIVE_RELEASE} (its containers recreated); "
                      f"drift is the expected outcome (exit {DRIFT_EXIT})", flush=True)
            print(f"\n$ shadowrl {shlex.join(stage)}", flush=True)
            code = subprocess.call([*exe, *stage], env={**os.environ, "DOCKER_HOST": host})
            if code != expected:
                print(f"stage failed with exit code {code} (expected {expected})",
                      file=sys.stderr)
                return code or 1
    finally:
        live.close()
        live.client.close()
    print(f"\nlive link: done in {time.monotonic() - started:.0f}s; the live containers are "
          f"removed", flush=True)
    return 0


def closing_message(out: Path, model_uri: str) -> str:
    """Where the demo's outputs are and what each holds. The workflow is the policy's
    runbook when training distilled one with branches (train/runbook.json says), else the
    best static procedure found beside the policy."""
    runbook = out / "train" / "runbook.yaml"
    try:
        branches = int(json.loads((out / "train" / "runbook.json").read_text())["branches"])
    except (OSError, ValueError, KeyError, TypeError):
        branches = 0
    workflow = (f"{out / 'rollback-workflow.yaml'} is the runbook {runbook} distilled from "
                f"{model_uri} ({branches} branches on what is seen at the breach), as an Argo "
                f"Workflow" if branches else
                f"{out / 'rollback-workflow.yaml'} is the best static procedure found while "
                f"training {model_uri}, as an Argo Workflow (its header compares it with the "
                f"policy); {runbook} says why the policy's runbook is that procedure alone")
    return (f"\nDone. Open {out / 'rehearsal' / 'report.html'}; read "
            f"{out / 'optimize' / 'comparison.md'} (the search methods against the configured "
            f"procedure) and {out / 'train' / 'comparison.md'} (the trained policy against the "
            f"configured and best static procedures). {workflow}. Browse the run with "
            f"`mlflow ui --backend-store-uri sqlite:///mlflow.db`. When Docker was reachable, the "
            f"real-shadow rehearsals are in {out / 'real'}, and the live link's synced "
            f"scenario (scenario.yaml, with its drift check) and its rehearsal are in "
            f"{out / 'live'}.")


def default_out(scenario: str) -> Path:
    """One folder per scenario, so a demo of another scenario keeps the previous one."""
    return Path("out/demo") / Path(scenario).stem


if __name__ == "__main__":
    raise SystemExit(main())
