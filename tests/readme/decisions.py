"""What tests/test_readme.py does with each README command line.

Every command the README shows must match one decision (the first that matches wins); a
command matching none fails ``test_readme_command``, so a new README command needs a
decision here. Kinds:

- ``run``: run as written in the scratch workspace (tests/readme/workspace.py, with its
  documented SUBSTITUTIONS); it must exit 0, print exactly one JSON object when it has
  ``--json``, and create its ``--out``.
- ``make``: ``make -n`` (what it would run) in the workspace: the target and every
  ``VAR=value`` must reach the recipe. Running the targets themselves is what ``covered_by``
  and CI do.
- ``covered``: too long, needs a cluster or server, or rewrites the repository: the named
  tests cover it and must exist.
- ``install``: a ``pip install``: its pins and extras must match pyproject.toml and the
  Makefile (installing is not a test's job).
- ``counterexample``: quoted as what not to do.
- ``exported``: a command ``shadowrl export`` writes into a procedure (not one to run
  here): ``shadowrl export envs/checkout.yaml --format shell`` must contain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.readme.markdown import Command


@dataclass(frozen=True)
class Decision:
    pattern: str  # matched in full against the command as written
    kind: str  # run | make | covered | install | counterexample | exported
    why: str
    covered_by: tuple[str, ...] = ()  # "tests/path.py::test_name"

    def matches(self, command: Command) -> bool:
        return re.fullmatch(self.pattern, command.text) is not None


DEMO_TESTS = ("tests/test_demo.py::test_stages_write_under_the_output_folder",
              "tests/test_demo.py::test_the_champion_is_used_when_there_is_one_else_the_new_version",
              "tests/test_readme.py::test_the_demo_prints_the_files_the_readme_names")

DECISIONS: tuple[Decision, ...] = (
    Decision(r"shadowrl train \S+ --ray-address \S+ --tracking-uri \S+", "covered",
             "needs a Ray cluster and an MLflow server",
             ("tests/app/test_experiment.py::test_unreachable_ray_address_exits_2",
              "tests/integrations/test_tracking.py::test_registry_flow_against_mlflow_server")),
    Decision(r"shadowrl (\w+ .*--backend docker.*|docker \w+.*)", "covered",
             "needs a Docker daemon: the real-shadow tests run these",
             ("tests/shadow/docker/test_backend.py::"
              "test_rehearse_on_the_real_shadow_writes_real_timelines",
              "tests/shadow/docker/test_docker_cli.py::"
              "test_status_build_and_sweep_print_one_json_object")),
    Decision(r"apt-get install -y docker\.io debootstrap", "covered",
             "installs Debian packages: make docker-deps (make test, CI) runs it, and the "
             "real-shadow tests need what it installs",
             ("tests/shadow/docker/test_daemon.py::"
              "test_connect_twice_returns_working_clients_of_one_daemon",)),
    Decision(r"python benchmarks/sim_vs_real\.py.*", "covered",
             "minutes of real rehearsals; the comparison itself is tested on two simulators",
             ("tests/calibration/test_compare.py::test_the_same_backend_twice_has_no_gap",)),
    Decision(r"shadowrl sync .*", "covered",
             "reads a live deployment (a compose project on a Docker daemon, or a cluster): "
             "the tests run sync on a compose file and on a real compose-style deployment",
             ("tests/live/sync/test_cli.py::test_create_then_in_sync_then_drift",
              "tests/shadow/docker/test_sync_live.py::"
              "test_sync_rehearses_on_both_backends_and_reports_a_new_version")),
    Decision(r"shadowrl serve .*", "covered",
             "a service that runs until stopped: the tests run it on a free port with a real "
             "SQLite file and call its API",
             ("tests/service/test_api.py::"
              "test_triggered_rehearsal_completes_and_its_verdict_is_served",
              "tests/docs/test_service_examples.py::test_the_example_config_loads")),
    Decision(r"curl .*/api/v1/.*", "covered", "a call of a running service's API",
             ("tests/service/test_api.py::"
              "test_triggered_rehearsal_completes_and_its_verdict_is_served",)),
    Decision(r"shadowrl mirror .*", "covered",
             "a proxy that runs until stopped, in front of a live service: the tests run it "
             "between real HTTP servers",
             ("tests/live/test_mirror.py::"
              "test_the_mirrored_share_over_10000_requests_is_within_1_point_of_p",
              "tests/live/test_mirror.py::"
              "test_live_p50_through_the_mirror_stays_within_2_ms_with_a_paused_shadow")),
    Decision(r"shadowrl calibrate .*", "covered",
             "a calibration is minutes of real rehearsals; the real-shadow tests run a small "
             "one (interrupted, resumed) and the fit is tested on simulators",
             ("tests/shadow/docker/test_calibrate.py::"
              "test_calibrate_resumes_after_an_interrupt_and_writes_a_loadable_calibration",
              "tests/calibration/test_fit.py::"
              "test_the_queueing_fit_recovers_service_time_and_concurrency")),
    Decision(r"python benchmarks/mirror\.py.*", "covered",
             "a minute of load against real HTTP servers on both cores; the mirror's latency "
             "and share claims are the mirror tests'",
             ("tests/live/test_mirror.py::"
              "test_live_p50_through_the_mirror_stays_within_2_ms_with_a_paused_shadow",)),
    Decision(r"python benchmarks/calibration\.py.*", "covered",
             "runs calibrate on two scenarios (an hour of real rehearsals)",
             ("tests/shadow/docker/test_calibrate.py::"
              "test_calibrate_resumes_after_an_interrupt_and_writes_a_loadable_calibration",)),
    Decision(r"shadowrl optimize .*--verify docker.*", "covered",
             "real rehearsals on Docker (the real-shadow tests run one); without Docker the "
             "verification's rule, records and header are tested on the simulator",
             ("tests/shadow/docker/test_verification.py::"
              "test_optimize_verify_docker_writes_a_verified_procedure",
              "tests/rehearsal/test_verification.py::"
              "test_optimize_writes_the_verification_everywhere")),
    Decision(r"shadowrl .*", "run", "cheap enough with the workspace's substitutions"),
    Decision(r"python -m shadowrl \w.*", "run", "cheap enough with the workspace's "
             "substitutions"),
    Decision(r"python -m shadowrl\.demo", "covered",
             "make demo's runner: several minutes of training",
             DEMO_TESTS),
    Decision(r"make demo( [A-Z_]+=\S+)*", "make", "several minutes of training", DEMO_TESTS),
    Decision(r"make test", "make", "the whole suite: what CI runs (.ci/run)",
             ("tests/test_readme.py::test_make_test_is_what_ci_runs",)),
    Decision(r"make docker-deps", "make", "installs Debian packages (as root); make test runs "
             "it before the real-shadow tests",
             ("tests/test_readme.py::test_make_test_is_what_ci_runs",)),
    Decision(r"make install( [A-Z_]+=\S+)*", "make", "installs packages",
             ("tests/test_readme.py::test_install_pins_match",)),
    Decision(r"(python -m )?pytest( -n \d+)?", "covered", "the suite itself (make test, .ci/run)",
             ("tests/test_readme.py::test_make_test_is_what_ci_runs",)),
    Decision(r"pip install torch", "counterexample",
             "quoted as what pulls a multi-GB CUDA build"),
    Decision(r"pip install .*", "install", "installing is not a test's job",
             ("tests/test_readme.py::test_install_pins_match",)),
    Decision(r"python benchmarks/(env_throughput|make_history)\.py", "run",
             "cheap with the workspace's substitutions"),
    Decision(r"python benchmarks/optimizer_quality\.py.*", "covered",
             "a measurement taking many minutes per scenario; the same optimizer runs in the "
             "README's `shadowrl optimize` commands",
             ("tests/app/test_use_cases.py::test_optimize_returns_the_comparison",)),
    Decision(r"python benchmarks/optimizer_scaling\.py.*", "covered",
             "optimize --method all on four generated procedures (many minutes); its "
             "generator and the oracle's proofs on its procedures are a test",
             ("tests/rl/test_search.py::test_the_oracle_proves_optima_of_generated_procedures",)),
    Decision(r"python benchmarks/oracle_information\.py.*", "covered",
             "oracle searches on noise siblings of held-out incidents (minutes); the siblings "
             "and the inequality the benchmark reads are a test",
             ("tests/rl/test_search.py::"
              "test_siblings_share_the_incident_and_differ_in_the_noise_only",)),
    Decision(r"python benchmarks/plan_library\.py.*", "covered",
             "oracle searches on 30 incidents and 2,000 plan rollouts (minutes); the cost "
             "matrix and the chooser the benchmark reads are a test",
             ("tests/rl/test_search.py::"
              "test_the_plan_library_costs_every_plan_from_the_same_breach",)),
    Decision(r"python benchmarks/rehearse_memory\.py.*", "covered",
             "a measurement of 20,000 rehearsals (minutes); the same bound, as a ratio of a "
             "short and a longer campaign, is a test",
             ("tests/app/test_rehearse_safety.py::"
              "test_memory_with_out_does_not_grow_with_the_runs",)),
    Decision(r"python tests/golden/goldens\.py", "covered", "rewrites tests/golden/*.json",
             ("tests/golden/test_goldens.py::test_outputs_match_goldens",)),
    Decision(r"mlflow ui .*", "covered", "a server that runs until stopped",
             ("tests/integrations/test_tracking.py::test_registry_flow_against_mlflow_server",)),
    Decision(r"kubectl .*", "exported", "what an exported procedure runs against a cluster",
             ("tests/export/test_export.py::test_shell_script",)),
    Decision(r"ray start .*", "covered", "starts a Ray cluster node",
             ("tests/integrations/test_parallel.py::"
              "test_ray_session_reuses_running_ray_and_rejects_unreachable",)),
)


def decide(command: Command) -> Decision | None:
    return next((d for d in DECISIONS if d.matches(command)), None)
