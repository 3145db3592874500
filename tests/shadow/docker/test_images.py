"""The base and app images: cached by recipe hash, and holding what the shadow runs."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import pytest
from docker.errors import APIError, ImageNotFound

from shadowrl.shadow.docker import images
from shadowrl.shadow.docker.images import (
    ImageBuildError,
    Images,
    app_tag,
    base_tag,
    debian_mirror,
    ensure_images,
    remove_images,
)
from shadowrl.shadow.docker.labels import labels


def _run(client: docker.DockerClient, image: str, cmd: list[str], shadow_id: str) -> str:
    out = client.containers.run(image, cmd, remove=True, network_mode="none",
                                labels=labels(shadow_id, "test"))
    return out.decode(errors="replace")


def test_ensure_images_twice_builds_nothing(docker_client: docker.DockerClient,
                                            shadow_images: Images) -> None:
    before = {tag: docker_client.images.get(tag).id for tag in (shadow_images.base,
                                                               shadow_images.app)}
    stages: list[str] = []
    t0 = time.monotonic()
    again = ensure_images(docker_client, on_progress=lambda stage, _n, _t: stages.append(stage))
    assert time.monotonic() - t0 < 5
    assert again == shadow_images == Images(base_tag(), app_tag())
    assert stages == ["base/cached", "app/cached"]
    assert {tag: docker_client.images.get(tag).id for tag in before} == before
    assert docker_client.images.get(again.base).labels[images.IMAGE_LABEL] == "base"
    assert docker_client.images.get(again.app).labels[images.IMAGE_LABEL] == "app"


def test_the_app_image_holds_the_runtime(docker_client: docker.DockerClient,
                                         shadow_images: Images, shadow_id: str) -> None:
    out = _run(docker_client, shadow_images.app, [
        "sh", "-c", "python3 -c 'import aiohttp, asyncpg, redis; print(\"py-ok\")' && "
        "haproxy -v && redis-server --version && test -f /app/refapp.py && "
        "test -d /etc/shadowrl && echo all-ok"], shadow_id)
    assert "py-ok" in out and "HAProxy version" in out and "Redis server" in out, out
    assert out.strip().endswith("all-ok"), out


def test_postgres_starts_with_the_documented_command(docker_client: docker.DockerClient,
                                                     shadow_images: Images,
                                                     shadow_id: str) -> None:
    pg = docker_client.containers.run(
        shadow_images.app, list(images.POSTGRES_COMMAND), user="postgres",
        stop_signal="SIGINT", detach=True, network_mode="none",
        labels=labels(shadow_id, "datastore"))
    try:
        deadline = time.monotonic() + 20
        while True:
            res = pg.exec_run(["psql", "-U", "postgres", "-d", "shadow", "-c", "select 1"])
            if res.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert res.exit_code == 0, res.output.decode(errors="replace") + pg.logs().decode()
        tcp = pg.exec_run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "shadow",
                           "-tAc", "show listen_addresses"])
        assert (tcp.exit_code, tcp.output.strip()) == (0, b"*"), tcp.output
        t0 = time.monotonic()
        pg.stop(timeout=10)
        assert time.monotonic() - t0 < 5, "SIGINT is postgres' fast shutdown"
        assert pg.wait()["StatusCode"] == 0
    finally:
        pg.remove(force=True)


def _context_copy(tmp_path: Path) -> dict[str, Path]:
    """The app context with a private refapp.py the test may change."""
    files = dict(images.app_files())
    refapp = tmp_path / "refapp.py"
    if files["refapp.py"].is_file():
        shutil.copy(files["refapp.py"], refapp)
    else:  # written by another module's author; any content serves this test
        refapp.write_text("print('placeholder')\n")
    files["refapp.py"] = refapp
    return files


def test_the_app_tag_follows_every_context_file(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    files = _context_copy(tmp_path)
    monkeypatch.setattr(images, "app_files", lambda: files)
    base, app = base_tag(), app_tag()
    files["refapp.py"].write_text(files["refapp.py"].read_text() + "# changed\n")
    changed = app_tag()
    assert changed != app and changed.startswith("shadowrl/app:")
    assert base_tag() == base
    hba = tmp_path / "pg_hba.conf"
    hba.write_text(files["pg_hba.conf"].read_text() + "# changed\n")
    files["pg_hba.conf"] = hba
    assert app_tag() not in (app, changed)
    assert app_tag("shadowrl/base:other") != app_tag()


def test_a_changed_refapp_rebuilds_only_the_app_layer_once(
        docker_client: docker.DockerClient, shadow_images: Images, shadow_id: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = _context_copy(tmp_path)
    files["refapp.py"].write_text(files["refapp.py"].read_text() + f"# {shadow_id}\n")
    monkeypatch.setattr(images, "app_files", lambda: files)
    results: list[Images] = []
    stages: list[list[str]] = [[], []]

    def build(log: list[str]) -> None:
        results.append(ensure_images(docker_client,
                                     on_progress=lambda stage, _n, _t: log.append(stage)))

    t0 = time.monotonic()
    threads = [threading.Thread(target=build, args=(log,)) for log in stages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    try:
        assert len(results) == 2 and results[0] == results[1], stages
        variant = results[0]
        assert variant.base == shadow_images.base and variant.app != shadow_images.app
        assert not any(stage.startswith("base/") and stage != "base/cached"
                       for log in stages for stage in log), stages
        builders = [log for log in stages if "app/building" in log]
        assert len(builders) == 1, stages
        assert elapsed < 60, f"an app-layer rebuild took {elapsed:.1f} s"
        out = _run(docker_client, variant.app, ["tail", "-n", "1", "/app/refapp.py"], shadow_id)
        assert out.strip() == f"# {shadow_id}"
    finally:
        for result in results[:1]:
            try:
                docker_client.images.remove(result.app)
            except ImageNotFound:
                pass


def test_debian_mirror_comes_from_the_host_apt_sources(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://security.example/debian-security\n"
                      "Suites: bookworm-security\n\n"
                      "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
                      "Suites: bookworm bookworm-updates\nComponents: main\n")
    legacy = tmp_path / "sources.list"
    legacy.write_text("# deb http://old.example/debian bookworm main\n"
                      "deb [arch=amd64] http://legacy.example/debian bookworm main\n")
    monkeypatch.setattr(images, "SOURCES_DEB822", deb822)
    monkeypatch.setattr(images, "SOURCES_LIST", legacy)
    assert debian_mirror() == "http://mirror.example/debian"
    monkeypatch.setattr(images, "SOURCES_DEB822", tmp_path / "absent")
    assert debian_mirror() == "http://legacy.example/debian"
    legacy.write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    assert debian_mirror() == images.DEFAULT_MIRROR


def test_an_unreachable_mirror_fails_with_debootstraps_output(
        docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "debian_mirror", lambda: "http://127.0.0.1:9/debian")
    before = set(Path("/var/tmp").glob("shadowrl-base-*"))
    with pytest.raises(ImageBuildError) as info:
        images._build_base(docker_client, "shadowrl/base:unreachable", lambda *_a: None)
    message = str(info.value)
    assert "debootstrap failed" in message and "127.0.0.1:9" in message
    assert "E:" in message or "Failure" in message or "failed" in message.lower()
    assert set(Path("/var/tmp").glob("shadowrl-base-*")) == before, "the build dir is removed"


def test_a_missing_debootstrap_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(images, "_SBIN_PATH", str(tmp_path))
    monkeypatch.setattr(images.os, "geteuid", lambda: 0)
    with pytest.raises(ImageBuildError, match="apt-get install debootstrap"):
        images._debootstrap()
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="needs root"):
        images._debootstrap()


class _FakeImages:
    """Just enough of ``client.images`` for :func:`remove_images`."""

    def __init__(self, found: list[Any], in_use: set[str]) -> None:
        self.found, self.in_use = found, in_use
        self.removed: list[str] = []

    def list(self, filters: dict[str, str]) -> list[Any]:
        assert filters == {"label": images.IMAGE_LABEL}
        return list(self.found)

    def remove(self, image_id: str, force: bool = False) -> None:
        if image_id in self.in_use:
            raise APIError("conflict", explanation="image is being used by running container")
        self.removed.append(image_id)


def _image(image_id: str, tag: str, kind: str) -> Any:
    return SimpleNamespace(id=image_id, tags=[tag], labels={images.IMAGE_LABEL: kind})


def test_remove_images_drops_apps_first_and_keeps_what_it_is_told() -> None:
    found = [_image("b1", "shadowrl/base:old", "base"), _image("a1", "shadowrl/app:old", "app"),
             _image("b2", "shadowrl/base:new", "base"), _image("a2", "shadowrl/app:new", "app")]
    fake = _FakeImages(found, in_use=set())
    client: Any = SimpleNamespace(images=fake)
    removed = remove_images(client, keep=Images("shadowrl/base:new", "shadowrl/app:new"))
    assert removed == ["shadowrl/app:old", "shadowrl/base:old"]
    assert fake.removed == ["a1", "b1"]
    fake = _FakeImages(found, in_use={"a2"})
    with pytest.raises(ImageBuildError, match="shadowrl/app:new"):
        remove_images(SimpleNamespace(images=fake))  # type: ignore[arg-type]
    assert fake.removed == ["a1", "b1", "b2"]


def test_a_rootfs_imports_as_a_labelled_image(docker_client: docker.DockerClient,
                                              shadow_id: str, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hello").write_text("hi\n")
    tag = f"shadowrl/base:test-{shadow_id}"
    seen: list[tuple[str, int, int | None]] = []
    try:
        images._import(docker_client, rootfs, tag, lambda *a: seen.append(a))
        image = docker_client.images.get(tag)
        assert image.labels[images.IMAGE_LABEL] == "base"
        assert "LANG=C.UTF-8" in image.attrs["Config"]["Env"]
        assert seen and seen[-1][0] == "base/importing"
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except ImageNotFound:
            pass


def test_a_failing_tar_leaves_no_image(docker_client: docker.DockerClient, shadow_id: str,
                                       tmp_path: Path) -> None:
    tag = f"shadowrl/base:test-{shadow_id}"
    with pytest.raises(ImageBuildError):
        images._import(docker_client, tmp_path / "absent", tag, lambda *_a: None)
    with pytest.raises(ImageNotFound):
        docker_client.images.get(tag)
