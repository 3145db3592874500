"""``shadowrl serve`` as a command: bad input exits 2 naming file, line and field (or the
flag) before anything starts; ``--json`` prints one object when it stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import READ_TOKEN, SERVING, WRITE_TOKEN, service_config


def run_serve(config: Path, *args: str, env_tokens: bool = True,
              timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if env_tokens:
        env.update(SHADOWRL_TEST_READ=READ_TOKEN, SHADOWRL_TEST_WRITE=WRITE_TOKEN)
    else:
        env.pop("SHADOWRL_TEST_READ", None)
        env.pop("SHADOWRL_TEST_WRITE", None)
    return subprocess.run([sys.executable, "-m", "shadowrl", "serve", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=timeout_s,
                          cwd=config.parent)


def test_a_bad_config_names_file_line_and_field(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    text = config.read_text().replace("    optimize: {on_change: false}\n",
                                      "    optimize: {on_change: false}\n    retries: 3\n")
    config.write_text(text)
    line = text.splitlines().index("    retries: 3") + 1
    done = run_serve(config)
    assert done.returncode == 2, done.stderr
    assert f"{config}:{line}: deployments[0].retries: " in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_an_unset_token_variable_and_a_missing_scenario_are_named(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    config.write_text(config.read_text().replace("envs/checkout.yaml", "envs/nope.yaml"))
    done = run_serve(config, env_tokens=False)
    assert done.returncode == 2
    assert "auth.tokens[0].env: environment variable SHADOWRL_TEST_READ is not set" \
        in done.stderr
    assert "deployments[0].scenario: " in done.stderr and "no such file" in done.stderr


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        done = run_serve(service_config(tmp_path), "--port", str(port))
    finally:
        busy.close()
    assert done.returncode == 2
    assert f"--host/--port: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_prints_one_object_when_it_stops(tmp_path: Path) -> None:
    config = service_config(tmp_path, runs=2)
    env = {**os.environ, "SHADOWRL_TEST_READ": READ_TOKEN, "SHADOWRL_TEST_WRITE": WRITE_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "shadowrl", "serve", str(config), "--port",
                             "0", "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if SERVING.search(line):
            break
        if "job 1: finished" in line:
            break
    for line in proc.stderr:  # the start-up rehearsal finishes
        if "job 1: finished" in line:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["deployments"] == ["checkout"]
    assert result["jobs"] == {"succeeded": 1}
    assert result["url"].startswith("http://127.0.0.1:")
