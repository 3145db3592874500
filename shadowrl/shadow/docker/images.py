"""The two images every shadow container runs, built here without any registry.

``shadowrl/base:<hash>`` is a Debian rootfs made by ``debootstrap`` with every package the
shadow needs (Python with aiohttp/asyncpg/redis, PostgreSQL, Redis, HAProxy) and imported as
a tar stream: no registry and no container network are needed, only the Debian mirror.
``shadowrl/app:<hash>`` adds a PostgreSQL data dir made at build time and the reference app.
Tags are hashes of their recipes, so a cached image is found by its tag and a change to
``refapp.py`` rebuilds only the app layer (seconds), never the base (about a minute).
Images carry the label ``shadowrl.image`` (not the shadow label): they are a cache that
outlives every shadow and every sweep.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from shadowrl.core.errors import BackendUnavailable
from shadowrl.shadow.docker.daemon import file_lock

SUITE = "bookworm"
VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-aiohttp", "python3-asyncpg", "python3-redis", "postgresql",
                 "redis-server", "haproxy", "procps")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_DEB822 = Path("/etc/apt/sources.list.d/debian.sources")
SOURCES_LIST = Path("/etc/apt/sources.list")
BASE_REPO = "shadowrl/base"
APP_REPO = "shadowrl/app"
IMAGE_LABEL = "shadowrl.image"  # base | app
RECIPE_DIR = Path(__file__).resolve().parent / "recipe"
REFAPP = Path(__file__).resolve().parent / "refapp.py"
# Removed from the rootfs before import: the downloaded .debs and package lists.
APT_CACHES = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*")
BASE_CHANGES = (f"LABEL {IMAGE_LABEL}=base", "ENV LANG=C.UTF-8",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["/bin/bash"]')
BUILD_LOCK_TIMEOUT_S = 1800.0
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# How the backend runs PostgreSQL from the app image (user postgres, stop_signal SIGINT).
PGDATA = "/var/lib/shadowrl/pg"
POSTGRES_BIN = "/usr/lib/postgresql/15/bin/postgres"
POSTGRES_COMMAND = (POSTGRES_BIN, "-D", PGDATA, "-c", "listen_addresses=*", "-c", "fsync=off",
                    "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
POSTGRES_DATABASE = "shadow"

Progress = Callable[[str, int, int | None], None]


def progress_lines(log: Callable[[str], None], prefix: str = "") -> Progress:
    """An ``on_progress`` for :func:`ensure_images` that logs a line per stage and every 25
    packages within one (debootstrap reports each of about 130)."""
    last = [""]

    def report(stage: str, done: int, total: int | None) -> None:
        if stage == last[0] and done % 25 and done != total:
            return
        last[0] = stage
        log(f"{prefix}{stage}" + (f" ({done}/{total})" if total else f" ({done})" if done
                                  else ""))
    return report


class ImageBuildError(BackendUnavailable):
    """An image could not be built; the message carries the failing command's output tail."""


@dataclass(frozen=True)
class Images:
    """The tags of the two images, as ``ensure_images`` made or found them."""

    base: str
    app: str


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:12]


def base_recipe() -> dict[str, object]:
    """What the base image is made of; its hash is the base tag. The mirror is left out:
    any mirror serves the same packages."""
    return {"suite": SUITE, "variant": VARIANT, "packages": list(BASE_PACKAGES),
            "command": ["debootstrap", f"--variant={VARIANT}",
                        f"--include={','.join(BASE_PACKAGES)}", SUITE, "<rootfs>", "<mirror>"],
            "clean": list(APT_CACHES), "changes": list(BASE_CHANGES)}


def base_tag() -> str:
    """``shadowrl/base:<hash12>`` of :func:`base_recipe`."""
    return f"{BASE_REPO}:{_digest(json.dumps(base_recipe(), sort_keys=True).encode())}"


def app_files() -> dict[str, Path]:
    """The app build context: every file of ``recipe/`` plus ``refapp.py`` (name -> file)."""
    files = {p.name: p for p in sorted(RECIPE_DIR.iterdir()) if p.is_file()}
    files["refapp.py"] = REFAPP
    return files


def _read_context() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, path in app_files().items():
        try:
            out[name] = path.read_bytes()
        except OSError as exc:
            raise ImageBuildError(f"the app image's context lacks {name}: {exc}") from exc
    return out


def app_tag(base: str | None = None) -> str:
    """``shadowrl/app:<hash12>`` of the base tag and every file of the app context."""
    h = hashlib.sha256((base or base_tag()).encode())
    for name, data in sorted(_read_context().items()):
        h.update(f"\0{name}\0{len(data)}\0".encode())
        h.update(data)
    return f"{APP_REPO}:{h.hexdigest()[:12]}"


def debian_mirror() -> str:
    """The host's Debian mirror for :data:`SUITE` (deb822 ``URIs:`` or ``sources.list``),
    else :data:`DEFAULT_MIRROR` (e.g. on a non-Debian host)."""
    if SOURCES_DEB822.is_file():
        for stanza in re.split(r"\n\s*\n", SOURCES_DEB822.read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    if SOURCES_LIST.is_file():
        for line in SOURCES_LIST.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return DEFAULT_MIRROR


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def _lock_path(client: docker.DockerClient) -> Path:
    """One build lock per daemon (two daemons may build at once), shared by all processes."""
    daemon_id = str(client.info().get("ID", "unknown"))
    name = f"shadowrl-images-{os.geteuid()}-{_digest(daemon_id.encode())}.lock"
    return Path(tempfile.gettempdir()) / name


def ensure_images(client: docker.DockerClient, *, on_progress: Progress | None = None) -> Images:
    """The base and app images, built only when their tags are missing.

    ``on_progress(stage, n, total)`` sees ``base/cached``, or ``base/resolving``, then
    ``base/retrieving``, ``base/extracting``, ``base/unpacking``, ``base/configuring`` (n
    packages so far; debootstrap never says how many, so the total is ``None``; unpacking and
    configuring run twice, required then base packages, and their counts go on),
    ``base/importing`` (MiB of about ``total``); then ``app/cached`` or ``app/building``
    (Dockerfile step n of total). A scratch build takes about 70 s, a cached call ~5 ms.
    A file lock per daemon makes parallel processes build once; the others wait and reuse.
    """
    progress = on_progress or (lambda _stage, _n, _total: None)
    base = base_tag()
    app = app_tag(base)
    if _exists(client, base) and _exists(client, app):
        progress("base/cached", 1, 1)
        progress("app/cached", 1, 1)
        return Images(base, app)
    try:
        lock = file_lock(_lock_path(client), timeout_s=BUILD_LOCK_TIMEOUT_S,
                         what="building the shadowrl images")
        with lock:
            if _exists(client, base):
                progress("base/cached", 1, 1)
            else:
                _build_base(client, base, progress)
            if _exists(client, app):
                progress("app/cached", 1, 1)
            else:
                _build_app(client, base, app, progress)
    except TimeoutError as exc:
        raise ImageBuildError(str(exc)) from exc
    return Images(base, app)


def _debootstrap() -> str:
    """The debootstrap command, or a clear error saying how to get it."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the shadow's base image needs root (debootstrap "
                              "creates device nodes and runs package scripts in a chroot)")
    found = shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}")
    if found is None:
        raise ImageBuildError("debootstrap is not installed; on Debian: "
                              "`apt-get install debootstrap` (or `make docker-deps`)")
    return found


# Package lines: "I: Retrieving adduser 3.134", "I: Unpacking libacl1:amd64...". Each
# "Retrieving" is followed at once by its "Validating": that is counted with the download.
_PACKAGE_LINE = re.compile(r"^I: (?:(Retrieving) ([a-z0-9][^ ]*) [^ ]+"
                           r"|(Extracting|Unpacking|Configuring) ([a-z0-9][^ ]*)\.\.\.)$")


def _run_debootstrap(rootfs: Path, mirror: str, progress: Progress) -> None:
    """Run debootstrap, reporting each package line as it comes (counts per stage)."""
    cmd = [_debootstrap(), f"--variant={VARIANT}", f"--include={','.join(BASE_PACKAGES)}",
           SUITE, str(rootfs), mirror]
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive",
           "PATH": f"{os.environ.get('PATH', '')}:{_SBIN_PATH}"}
    tail: collections.deque[str] = collections.deque(maxlen=25)
    counts: collections.Counter[str] = collections.Counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            match = _PACKAGE_LINE.match(line)
            if match:
                stage = (match.group(1) or match.group(3)).lower()
                counts[stage] += 1
                progress(f"base/{stage}", counts[stage], None)
            elif line.startswith("I: Resolving"):
                progress("base/resolving", 0, None)
    if proc.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        detail = ""
        if log.is_file():
            detail = "\n--- debootstrap.log:\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-15:])
        raise ImageBuildError(
            f"debootstrap failed (exit {proc.returncode}) with mirror {mirror} (from the "
            f"host's apt sources, else the default: is it reachable from here?):\n"
            + "\n".join(tail) + detail)


def _clean_rootfs(rootfs: Path) -> None:
    for pattern in APT_CACHES:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _tar_bytes(rootfs: Path) -> int:
    """About the size of the rootfs as a tar: a 512-byte header per entry, data in blocks."""
    total = 0
    for top, dirs, files in os.walk(rootfs):
        total += 512 * (len(dirs) + len(files))
        for name in files:
            try:
                total += -(-os.lstat(os.path.join(top, name)).st_size // 512) * 512
            except OSError:
                pass
    return total


def _import(client: docker.DockerClient, rootfs: Path, tag: str, progress: Progress) -> None:
    """``tar`` the rootfs into ``docker import`` as a chunked stream (no tar file on disk).

    A tar that fails midway may still import as a truncated image: its tag is removed, so
    that the next call builds again instead of finding a broken image in the cache.
    """
    total_mib = _tar_bytes(rootfs) >> 20
    cmd = ["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-cf", "-", "."]
    with tempfile.TemporaryFile() as errlog, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=errlog) as tar:
        assert tar.stdout is not None
        stdout = tar.stdout

        def chunks() -> Iterator[bytes]:
            sent = 0
            while chunk := stdout.read(1 << 20):
                sent += len(chunk)
                if sent % (32 << 20) < len(chunk):
                    progress("base/importing", sent >> 20, total_mib)
                yield chunk
            progress("base/importing", sent >> 20, total_mib)

        repository, _, version = tag.partition(":")
        try:
            client.api.import_image_from_stream(chunks(), repository=repository, tag=version,
                                                changes=list(BASE_CHANGES))
        except (DockerException, OSError) as exc:
            tar.kill()
            raise ImageBuildError(f"docker import of {rootfs} as {tag} failed: {exc}") from exc
        returncode = tar.wait()
        errlog.seek(0)
        err = errlog.read().decode(errors="replace")
    if returncode != 0:
        if _exists(client, tag):
            client.images.remove(tag, force=True)
        raise ImageBuildError(f"tar of {rootfs} failed (exit {returncode}): {err[-2000:]}")
    if not _exists(client, tag):
        raise ImageBuildError(f"docker import reported success but {tag} does not exist")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].encode().decode("unicode_escape") for line in lines]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove the build dir, first detaching any mount a failed debootstrap left in it
    (a bind-mounted /dev must never be deleted through the rootfs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for point in _mounts_under(path):
        libc.umount2(point.encode(), 2)  # MNT_DETACH
    if _mounts_under(path):
        raise ImageBuildError(f"{path} still has mounts in it; left in place, remove it by hand")
    shutil.rmtree(path, ignore_errors=True)


def _build_base(client: docker.DockerClient, tag: str, progress: Progress) -> None:
    """debootstrap into a temporary dir, clean the apt caches, import as ``tag``."""
    _debootstrap()
    scratch = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="shadowrl-base-", dir=scratch))
    try:
        rootfs = work / "rootfs"
        _run_debootstrap(rootfs, debian_mirror(), progress)
        _clean_rootfs(rootfs)
        _import(client, rootfs, tag, progress)
    finally:
        _remove_tree(work)


def _context_tar(files: dict[str, bytes]) -> io.BytesIO:
    """The build context as an in-memory tar with fixed metadata (owner root, mtime 0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


_STEP = re.compile(r"^Step (\d+)/(\d+) :")


def _build_app(client: docker.DockerClient, base: str, tag: str, progress: Progress) -> None:
    """``docker build`` of the app context on ``base`` (no network: nothing is fetched)."""
    context = _context_tar(_read_context())
    tail: collections.deque[str] = collections.deque(maxlen=25)
    try:
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag,
                                      buildargs={"BASE": base}, labels={IMAGE_LABEL: "app"},
                                      rm=True, forcerm=True, pull=False, network_mode="none",
                                      decode=True):
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                tail.extend(text.splitlines())
                step = _STEP.match(text)
                if step:
                    progress("app/building", int(step.group(1)), int(step.group(2)))
            if "error" in chunk:
                tail.append(str(chunk["error"]).rstrip())
                raise ImageBuildError(f"building {tag} failed:\n" + "\n".join(tail))
    except (DockerException, OSError) as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}\n" + "\n".join(tail)) from exc
    if not _exists(client, tag):
        raise ImageBuildError(f"building {tag} ended without the image:\n" + "\n".join(tail))


def remove_images(client: docker.DockerClient, *, keep: Images | None = None) -> list[str]:
    """Remove every image labelled ``shadowrl.image`` (apps first) except those in ``keep``;
    returns the removed tags. For a forced rebuild, or to drop stale recipes' images."""
    kept = {keep.base, keep.app} if keep else set()
    found = client.images.list(filters={"label": IMAGE_LABEL})
    found.sort(key=lambda image: image.labels.get(IMAGE_LABEL) != "app")
    removed: list[str] = []
    failed: list[str] = []
    for image in found:
        tags = [t for t in image.tags if t.startswith((BASE_REPO + ":", APP_REPO + ":"))]
        if not tags or kept.intersection(tags):
            continue
        try:
            client.images.remove(image.id, force=True)
            removed.extend(tags)
        except ImageNotFound:
            continue
        except APIError as exc:  # used by a running container
            failed.append(f"{', '.join(tags)}: {exc.explanation or exc}")
    if failed:
        raise ImageBuildError("could not remove: " + "; ".join(failed))
    return removed

