"""Ray: shadow replicas as actors, a Ray-backed SB3 ``VecEnv``, and evaluation fan-out.

- :func:`ray_session` joins a Ray cluster (``address`` or ``RAY_ADDRESS``) or starts a local
  one sized to the machine, and shuts down only what it started (a local one also when the
  driver is killed); Ray's messages about the cluster go to stderr, never stdout.
- :class:`RayVecEnv` is a Stable-Baselines3 ``VecEnv`` whose sub-envs are Ray actors, each
  holding one Monitor-wrapped :class:`~shadowrl.rl.env.RollbackEnv` (a *shadow replica*). Its
  results equal a ``DummyVecEnv`` over the same envs, seeds and actions; a replica whose
  actor dies is replaced and its interrupted episode is cut (see the class docstring).
- :func:`parallel_evaluate` and :func:`parallel_rehearse` split episode seeds into chunks run
  by Ray tasks and return results in seed order, equal to the serial
  :func:`shadowrl.rl.evaluate.evaluate` and :func:`shadowrl.rehearsal.runner.rehearse`.
  :class:`RayRehearseFn` plugs the same fan-out into ``run_campaign(rehearse_fn=...)``,
  a bounded window of runs at a time.

Importing this module imports Ray and SB3 (about a second); import it lazily, where Ray is
actually used. It needs the ``ray`` extra (``pip install 'shadowrl[ray]'``), which brings the
``rl`` one. Never ``ray stop``: only what a session started is shut down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowrl.core.extras import missing_extra

try:
    import gymnasium as gym
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError
    from stable_baselines3.common.env_util import is_wrapped
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env.base_vec_env import (
        VecEnv,
        VecEnvIndices,
        VecEnvObs,
        VecEnvStepReturn,
    )
    from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info
except ImportError as exc:
    raise missing_extra("ray", exc) from exc

from shadowrl.core.spec import Scenario, as_scenario

__all__ = [
    "DEFAULT_OBJECT_STORE_MEMORY", "RayRehearseFn", "RaySession", "RayVecEnv",
    "parallel_evaluate", "parallel_rehearse", "random_rollout", "ray_session",
]

DEFAULT_OBJECT_STORE_MEMORY = 300 * 2**20  # bytes: episodes and rehearsals are a few KB each
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
_CONNECT_TIMEOUT_S = 5.0
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_STARTUP_TIMEOUT_S = 300.0  # a replacement replica's start-up (imports, env build)
_RESTART_ATTEMPTS = 3  # per lost replica, before giving up with RuntimeError


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class RaySession:
    """The Ray runtime a :func:`ray_session` block runs in."""

    address: str | None  # the cluster joined (None: a local instance)
    started: bool  # True when this session started Ray and will shut it down
    num_cpus: float  # CPUs in the cluster


def _quiet_env() -> None:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _check_reachable(address: str) -> None:
    """Fail fast (ValueError naming the address) when ``host:port`` does not answer, or
    answers but does not speak gRPC.

    ``auto`` (the latest ``ray start`` on this machine) is checked by ``ray.init`` itself.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid Ray address {address!r}: expected HOST:PORT, "
                         "ray://HOST:PORT or auto")
    end = time.monotonic() + _CONNECT_TIMEOUT_S  # in all: a trickling server cannot hold it
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                      timeout=_CONNECT_TIMEOUT_S) as sock:
            # Ray's GCS and client server speak gRPC: an HTTP/2 server answers the connection
            # preface with a SETTINGS frame (type 4). Anything else (a dashboard, a web
            # server) would make ray.init retry for minutes.
            sock.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {_CONNECT_TIMEOUT_S:g} s")
                sock.settimeout(left)
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    if len(head) < 9 or head[3] != 4:
        raise ValueError(f"{address!r} answers but is not a Ray cluster (no gRPC on that "
                         "port; the GCS port is usually 6379, the Ray client's 10001)")


# Run by _Reaper in its own interpreter: waits for the driver's end (EOF on stdin), then,
# unless told "done", SIGKILLs the processes named pid:starttime that are still the same.
_REAPER_CODE = """
import os, signal, sys
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
if sys.stdin.buffer.read() != b"done":
    for arg in sys.argv[1:]:
        pid, start = (int(x) for x in arg.split(":"))
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                now = int(stat.read().rsplit(b")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue
        if now == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
"""


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process (Linux /proc)."""
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            stats[int(entry.name)] = (int(fields[1]), int(fields[19]))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return stats


class _Reaper:
    """Removes the local Ray processes of this driver when it dies without shutting them
    down (SIGKILL, the OOM killer).

    Ray ties the processes it starts directly (GCS, raylet, log monitor) to the driver with
    ``PR_SET_PDEATHSIG`` and workers exit within seconds of the raylet, but the raylet's
    agents (dashboard agent, runtime-env agent) notice its death and then spend about a
    minute trying to report it to the dead GCS. The reaper is a small process holding the
    read end of a pipe from the driver: the pipe closes however the driver ends, and unless
    :meth:`disarm` wrote ``done`` first, it kills the descendants ``ray.init`` gave the
    driver (checked by start time, so a reused pid is spared). Linux only; elsewhere it
    does nothing.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @staticmethod
    def descendants() -> set[str]:
        """This process's descendants now, as ``pid:starttime`` (empty off Linux)."""
        if not sys.platform.startswith("linux"):
            return set()
        try:
            stats = _proc_stats()
        except OSError:
            return set()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo, found = [os.getpid()], set()
        while todo:
            for pid in children.get(todo.pop(), []):
                found.add(f"{pid}:{stats[pid][1]}")
                todo.append(pid)
        return found

    @classmethod
    def start(cls, before: set[str]) -> _Reaper | None:
        """A reaper for the descendants that appeared since ``before`` (taken just before
        ``ray.init``): Ray's, not other children of the driver."""
        targets = sorted(cls.descendants() - before)
        if not targets:
            return None
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER_CODE, *targets],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return None  # no reaper: the agents linger a minute after a crash, no more
        return cls(process)

    def disarm(self) -> None:
        """Ray was shut down: let the reaper exit without killing anything."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(b"done")
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


@contextmanager
def _ray_messages_to_stderr() -> Iterator[None]:
    """Route the messages Ray's driver prints about the cluster to stderr for the block.

    Whatever ``log_to_driver`` says, the driver prints the errors the cluster publishes (a
    worker died, a node is out of memory) on *stdout*, prefixed ``(raylet)``; a command's
    stdout carries its ``--json`` object and nothing else. Ray looks its printer up on its
    worker module at each message, so replacing it there for the session is enough; a Ray
    without that printer is left alone.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout
        yield
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:  # pragma: no cover - another Ray layout
        yield
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return original({**data, "is_err": True}, *args, **kwargs)

    ray_worker.print_to_stdstream = to_stderr
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def _cluster_cpus() -> float:
    try:
        return float(ray.cluster_resources().get("CPU", 1.0))
    except Exception:  # noqa: BLE001 - a client connection may not answer; 1 is safe
        return 1.0


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *,
                object_store_memory: int = DEFAULT_OBJECT_STORE_MEMORY) -> Iterator[RaySession]:
    """Run the block with Ray available.

    - Ray already initialised in this process: reuse it, never shut it down.
    - ``address`` (or env ``RAY_ADDRESS``) set: join that cluster (``HOST:PORT``,
      ``ray://HOST:PORT`` or ``auto``); a cluster that cannot be reached raises
      ``ValueError`` naming the address. ``num_cpus`` is ignored when joining.
    - Otherwise: start a private local instance with ``num_cpus`` (default: every CPU of the
      machine), no dashboard, a small object store, worker logs kept out of the driver, and
      shut it down on exit. It never joins a cluster someone else started with ``ray start``.

    ``RAY_USAGE_STATS_ENABLED=0`` and ``RAY_AUTH_MODE=disabled`` are set unless already set.
    Inside the block, the messages Ray's driver prints about the cluster go to stderr,
    never stdout (see :func:`_ray_messages_to_stderr`).
    """
    with _ray_messages_to_stderr():
        with _ray_session(address, num_cpus, object_store_memory) as session:
            yield session


@contextmanager
def _ray_session(address: str | None, num_cpus: int | None,
                 object_store_memory: int) -> Iterator[RaySession]:
    _quiet_env()
    target = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        yield RaySession(None, False, _cluster_cpus())
        return
    saved_env_address = os.environ.get("RAY_ADDRESS")
    if target:
        _check_reachable(target)
        if num_cpus is not None:
            warnings.warn(f"num_cpus={num_cpus} is ignored when joining the cluster at "
                          f"{target}", stacklevel=3)
        try:
            ray.init(address=target, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise ValueError(f"cannot join the Ray cluster at {target!r}: {exc}") from None
    reaper: _Reaper | None = None
    if not target:
        before = _Reaper.descendants()
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 include_dashboard=False, object_store_memory=object_store_memory,
                 log_to_driver=False)
        reaper = _Reaper.start(before)
    try:
        yield RaySession(target, True, _cluster_cpus())
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.disarm()
        if saved_env_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved_env_address


# --------------------------------------------------------------------------- replicas


EnvSpec = Callable[[], gym.Env] | Mapping[str, Any]


def _build_env(spec: EnvSpec) -> gym.Env:
    """A Monitor-wrapped env from an env factory or from ``RollbackEnv`` keyword arguments."""
    if callable(spec):
        env = spec()
    else:
        from shadowrl.rl.env import RollbackEnv

        env = RollbackEnv(**dict(spec))
    return env if is_wrapped(env, Monitor) else Monitor(env)


def _masks_of(env: gym.Env) -> np.ndarray | None:
    try:
        fn = env.get_wrapper_attr("action_masks")
    except AttributeError:
        return None
    return np.asarray(fn(), dtype=bool)


def random_rollout(env: gym.Env, n_steps: int, rng: np.random.Generator,
                   needs_reset: bool = True) -> dict[str, int]:
    """Play ``n_steps`` random *valid* actions (from ``action_masks()`` when the env has it),
    resetting (unseeded, like a VecEnv's auto-reset) when an episode ends."""
    try:
        masks = env.get_wrapper_attr("action_masks")
    except AttributeError:
        masks = None
    if needs_reset:
        env.reset()
    episodes = 0
    for _ in range(n_steps):
        if masks is not None:
            valid = np.flatnonzero(masks())
            action: Any = int(valid[rng.integers(len(valid))])
        else:
            action = env.action_space.sample()
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episodes += 1
            env.reset()
    return {"steps": n_steps, "episodes": episodes}


class _Replica:
    """One shadow replica: the env inside a Ray actor. Mirrors one slot of DummyVecEnv."""

    def __init__(self, spec: EnvSpec) -> None:
        self.env = _build_env(spec)
        self._started = False

    def describe(self) -> tuple[gym.Space, gym.Space, Any, dict[str, Any]]:
        return (self.env.observation_space, self.env.action_space,
                getattr(self.env, "render_mode", None), dict(self.env.metadata))

    def reset(self, seed: int | None, options: dict[str, Any] | None,
              ) -> tuple[Any, dict[str, Any], np.ndarray | None]:
        maybe_options = {"options": options} if options else {}
        obs, info = self.env.reset(seed=seed, **maybe_options)
        self._started = True
        return obs, info, _masks_of(self.env)

    def step(self, action: Any) -> tuple[Any, float, bool, dict[str, Any],
                                         dict[str, Any] | None, np.ndarray | None]:
        # exactly DummyVecEnv.step_wait for one env
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info = None
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, reward, done, info, reset_info, _masks_of(self.env)

    def action_masks(self) -> np.ndarray | None:
        return _masks_of(self.env)

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def has_attr(self, name: str) -> bool:
        try:
            self.env.get_wrapper_attr(name)
        except AttributeError:
            return False
        return True

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)  # on the outer wrapper, like DummyVecEnv

    def env_method(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        return is_wrapped(self.env, wrapper_class)

    def rollout_chunk(self, n_steps: int, seed: int) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out: dict[str, float] = dict(random_rollout(
            self.env, n_steps, np.random.default_rng(seed), needs_reset=not self._started))
        self._started = True
        out["wall_s"] = time.perf_counter() - wall
        out["cpu_s"] = time.process_time() - cpu
        return out

    def close(self) -> None:
        self.env.close()


_RemoteReplica: Any = None


def _remote_replica_class() -> Any:
    global _RemoteReplica
    if _RemoteReplica is None:
        _RemoteReplica = ray.remote(_Replica)
    return _RemoteReplica


def _kill_quietly(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


@dataclass
class _Lost:
    """A replica whose actor died (or hung past the timeout) during a call."""

    error: BaseException


class RayVecEnv(VecEnv):
    """A Stable-Baselines3 ``VecEnv`` whose sub-envs are Ray actors (shadow replicas).

    ``env_fns_or_kwargs`` holds, per replica, either a picklable factory returning a gym env
    (e.g. the factories ``make_vec_env_for`` passes to ``vec_env_factory``, so
    ``vec_env_factory=RayVecEnv`` works) or the keyword arguments of
    :class:`~shadowrl.rl.env.RollbackEnv` (``{"scenario": path_or_Scenario, ...}``). Each
    replica's env is wrapped in SB3's ``Monitor`` unless the factory already did.

    Semantics are DummyVecEnv's: ``seed()`` seeds the next ``reset`` (``seed + i`` for env
    ``i``), ``set_options`` passes options to it, a finished episode auto-resets unseeded with
    ``infos[i]["terminal_observation"]`` set and ``"TimeLimit.truncated"`` in every info;
    given the same envs, seeds and actions the results are identical. ``step_async`` fans
    the actions out to the actors and ``step_wait`` gathers them. Each step also returns
    the replica's action mask, so ``env_method("action_masks")`` (what sb3-contrib's
    ``get_action_masks`` calls) is answered locally without a second round trip.

    Fault tolerance: when a replica's actor dies (``RayActorError``: killed, crashed, node
    lost) or does not answer within ``call_timeout_s``, a new actor is started, its env is
    rebuilt (``set_attr`` values replayed) and reset with the restart seed, and
    ``self.restarts`` is incremented. During ``reset`` the replacement is simply reset with the
    seed that reset would have used. During a step, the interrupted episode is *cut*: that
    env reports ``done=True``, reward 0, ``infos[i]["terminal_observation"]`` = the last
    observation the learner saw, ``infos[i]["replica_restarted"] = True`` and
    ``"TimeLimit.truncated": True`` (the episode did not end on its own, so SB3 bootstraps
    its value instead of treating it as terminal), and the returned observation starts a new
    episode. The action sent to the dead replica is dropped. We cut rather than replay
    because replaying would need every action of the episode recorded and a deterministic
    backend; a real shadow is neither, and a cut costs one partial episode.

    The restart seed is the pending ``seed()`` value for that env if any, else drawn from
    ``SeedSequence([base, env_index, restarts_of_that_env])`` where ``base`` is the last
    ``seed()`` argument (else ``restart_seed``): deterministic, and different from the
    incidents the replica already played.

    If Ray is not initialised, one is started (see :func:`ray_session`, ``address``) and
    shut down by :meth:`close`. ``num_cpus_per_replica`` reserves CPUs per actor (default:
    Ray's default, which reserves none while the actor runs).
    """

    def __init__(self, env_fns_or_kwargs: Sequence[EnvSpec], *, address: str | None = None,
                 num_cpus_per_replica: float | None = None,
                 call_timeout_s: float | None = None, max_restarts: int | None = None,
                 restart_seed: int = 0) -> None:
        if not env_fns_or_kwargs:
            raise ValueError("RayVecEnv needs at least one env factory or env kwargs")
        self._specs = list(env_fns_or_kwargs)
        self._stack = ExitStack()
        if not ray.is_initialized():
            self._stack.enter_context(ray_session(address))
        self.num_cpus_per_replica = num_cpus_per_replica
        self.call_timeout_s = call_timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        n = len(self._specs)
        self._restarts_per_env = [0] * n
        self._seed_base = int(restart_seed)
        self._attr_log: list[list[tuple[str, Any]]] = [[] for _ in range(n)]
        self._masks: list[np.ndarray | None] = [None] * n
        self._pending_cut: list[tuple[Any, dict[str, Any], np.ndarray | None] | None] = [None] * n
        self._needs_reset = False
        self._closed = False
        self.last_chunk_stats: list[dict[str, float]] = []
        self.actors: list[Any] = []
        try:
            self.actors = [self._new_actor(i) for i in range(n)]
            # wait for every replica: a factory that fails raises here, not mid-training
            described = ray.get([a.describe.remote() for a in self.actors])
        except BaseException:
            for actor in self.actors:
                _kill_quietly(actor)
            self._stack.close()
            raise
        obs_space, act_space, _, metadata = described[0]
        super().__init__(n, obs_space, act_space)
        self.metadata = metadata
        self.keys, shapes, dtypes = obs_space_info(obs_space)
        self.buf_obs = OrderedDict(
            [(k, np.zeros((n, *tuple(shapes[k])), dtype=dtypes[k])) for k in self.keys])
        self.buf_dones = np.zeros((n,), dtype=bool)
        self.buf_rews = np.zeros((n,), dtype=np.float32)
        self.buf_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._last_obs: list[Any] = [None] * n
        self._actions: np.ndarray | None = None
        self._refs: list[Any] = []

    # ------------------------------------------------------------------ actors

    def _new_actor(self, i: int) -> Any:
        cls = _remote_replica_class()
        if self.num_cpus_per_replica is not None:
            cls = cls.options(num_cpus=self.num_cpus_per_replica)
        return cls.remote(self._specs[i])

    def _gather(self, refs: list[Any]) -> list[Any]:
        """Results of one call per replica; a dead or hung replica gives :class:`_Lost`.

        Exceptions raised by the env itself propagate, as they would in DummyVecEnv."""
        lost: dict[int, _Lost] = {}
        if self.call_timeout_s is not None:
            _, not_ready = ray.wait(refs, num_returns=len(refs), timeout=self.call_timeout_s)
            waiting = set(not_ready)
            for k, ref in enumerate(refs):
                if ref in waiting:
                    lost[k] = _Lost(GetTimeoutError(
                        f"replica {k} did not answer within {self.call_timeout_s}s"))
        else:
            try:
                return ray.get(refs)
            except RayActorError:
                pass  # find out which ones died, below
        out: list[Any] = []
        for k, ref in enumerate(refs):
            if k in lost:
                out.append(lost[k])
                continue
            try:
                out.append(ray.get(ref))
            except RayActorError as exc:
                out.append(_Lost(exc))
        return out

    def _restart_seed(self, i: int) -> int:
        pending = self._seeds[i]
        if pending is not None:
            return int(pending)
        state = np.random.SeedSequence(
            [self._seed_base, i, self._restarts_per_env[i]]).generate_state(1)
        return int(state[0] % (2**31 - 1))

    def _restart(self, i: int, cause: BaseException,
                 ) -> tuple[Any, dict[str, Any], np.ndarray | None]:
        """Replace replica ``i`` with a new actor and reset it; returns (obs, info, mask)."""
        last: BaseException = cause
        for _ in range(_RESTART_ATTEMPTS):
            if self.max_restarts is not None and self.restarts >= self.max_restarts:
                raise RuntimeError(f"replica {i} lost ({last!r}) and the restart budget "
                                   f"({self.max_restarts}) is spent") from last
            _kill_quietly(self.actors[i])
            reset_seed = self._restart_seed(i)
            self._restarts_per_env[i] += 1
            self.restarts += 1
            self.actors[i] = self._new_actor(i)
            try:  # start-up (imports, env build) is not held to call_timeout_s
                ray.get(self.actors[i].describe.remote(), timeout=_STARTUP_TIMEOUT_S)
            except (RayActorError, GetTimeoutError) as exc:
                last = exc
                continue
            for name, value in self._attr_log[i]:
                self.actors[i].set_attr.remote(name, value)
            options = self._options[i] or None
            result = self._gather([self.actors[i].reset.remote(reset_seed, options)])[0]
            if not isinstance(result, _Lost):
                obs, info, mask = result
                info = dict(info)
                info["replica_restarted"] = True
                self._masks[i] = mask
                return obs, info, mask
            last = result.error
        raise RuntimeError(f"replica {i} could not be restarted: {last!r}") from last

    # ------------------------------------------------------------------ VecEnv API

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        seeds = super().seed(seed)
        self._seed_base = int(seeds[0])  # type: ignore[arg-type]
        return seeds

    def reset(self) -> VecEnvObs:
        refs = [actor.reset.remote(self._seeds[i], self._options[i] or None)
                for i, actor in enumerate(self.actors)]
        for i, result in enumerate(self._gather(refs)):
            if isinstance(result, _Lost):
                obs, info, mask = self._restart(i, result.error)
            else:
                obs, info, mask = result
            self.reset_infos[i] = info
            self._masks[i] = mask
            self._pending_cut[i] = None
            self._save_obs(i, obs)
        self._needs_reset = False
        # Seeds and options are only used once
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def step_async(self, actions: np.ndarray) -> None:
        if self._needs_reset:
            raise RuntimeError("rollout_chunk() moved the replicas on: call reset() first")
        self._actions = actions
        self._refs = [None if self._pending_cut[i] is not None
                      else actor.step.remote(actions[i]) for i, actor in enumerate(self.actors)]

    def step_wait(self) -> VecEnvStepReturn:
        live = [k for k, ref in enumerate(self._refs) if ref is not None]
        gathered = self._gather([self._refs[k] for k in live])
        results: list[Any] = [None] * self.num_envs
        for k, res in zip(live, gathered):
            results[k] = res
        for i, res in enumerate(results):
            if res is None or isinstance(res, _Lost):
                if res is None:  # lost outside a step (see _call); already restarted
                    restarted = self._pending_cut[i]
                    assert restarted is not None
                    self._pending_cut[i] = None
                else:
                    restarted = self._restart(i, res.error)
                obs, reset_info, mask = restarted
                self.buf_rews[i] = 0.0
                self.buf_dones[i] = True
                self.buf_infos[i] = {"terminal_observation": self._last_obs[i],
                                     "replica_restarted": True, "TimeLimit.truncated": True}
                self.reset_infos[i] = reset_info
            else:
                obs, reward, done, info, reset_info, mask = res
                self.buf_rews[i] = reward
                self.buf_dones[i] = done
                self.buf_infos[i] = info
                if reset_info is not None:
                    self.reset_infos[i] = reset_info
            self._masks[i] = mask
            self._save_obs(i, obs)
        self._refs = []
        return (self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones),
                deepcopy(self.buf_infos))

    def _call(self, indices: VecEnvIndices, make_ref: Callable[[Any], Any]) -> list[Any]:
        """One call on each target replica; a lost replica is restarted (its episode will be
        cut at the next step) and the call is repeated on the replacement."""
        idx = list(self._get_indices(indices))
        results = self._gather([make_ref(self.actors[i]) for i in idx])
        for k, (i, res) in enumerate(zip(idx, results)):
            if isinstance(res, _Lost):
                self._pending_cut[i] = self._restart(i, res.error)
                retry = self._gather([make_ref(self.actors[i])])[0]
                if isinstance(retry, _Lost):
                    raise RuntimeError(f"replica {i} died again: {retry.error!r}")
                results[k] = retry
        return results

    def action_masks(self) -> np.ndarray:
        """The stacked action masks of all replicas (cached from the last step or reset)."""
        return np.stack(self.env_method("action_masks"))

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks" and not method_args and not method_kwargs:
            if all(self._masks[i] is not None for i in idx):
                return [self._masks[i].copy() for i in idx]  # type: ignore[union-attr]
            return self._call(idx, lambda a: a.env_method.remote(method_name, (), {}))
        for i in idx:
            self._masks[i] = None  # the method may change the env's state
        results = self._call(idx, lambda a: a.env_method.remote(method_name, method_args,
                                                                method_kwargs))
        if method_name == "reset":
            self._needs_reset = False
        return results

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call(indices, lambda a: a.get_attr.remote(attr_name))

    def has_attr(self, attr_name: str) -> bool:
        # answered inside the actors: never ships (possibly unpicklable) attributes back
        return all(self._call(None, lambda a: a.has_attr.remote(attr_name)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        idx = list(self._get_indices(indices))
        for i in idx:
            self._attr_log[i] = [(n, v) for n, v in self._attr_log[i] if n != attr_name]
            self._attr_log[i].append((attr_name, value))
            self._masks[i] = None
        self._call(idx, lambda a: a.set_attr.remote(attr_name, value))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        return self._call(indices, lambda a: a.is_wrapped.remote(wrapper_class))

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(f"The render mode is {self.render_mode}, but this method assumes "
                          "it is `rgb_array` to obtain images.", stacklevel=2)
            return [None for _ in range(self.num_envs)]
        return self.env_method("render")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if ray.is_initialized():
                try:
                    self._gather([a.close.remote() for a in self.actors])
                finally:
                    for actor in self.actors:
                        _kill_quietly(actor)
        finally:
            self._stack.close()

    # ------------------------------------------------------------------ chunked rollouts

    def rollout_chunk(self, n_steps: int, seed: int = 0) -> int:
        """Every replica plays ``n_steps`` random valid actions inside its actor (one Ray call
        per replica, not per step) and the total step count is returned; per-replica
        ``steps``, ``episodes``, ``wall_s`` and ``cpu_s`` are kept in ``last_chunk_stats``.

        This is the throughput path when an env step is much cheaper than a Ray call. It is
        not part of the SB3 API: the replicas move on, so call :meth:`reset` before stepping
        through the VecEnv interface again. Replica ``i`` uses seed ``seed + i``.
        """
        self._needs_reset = True
        for i in range(self.num_envs):
            self._masks[i] = None
        refs = [actor.rollout_chunk.remote(int(n_steps), int(seed) + i)
                for i, actor in enumerate(self.actors)]
        total = 0
        self.last_chunk_stats = []
        for i, res in enumerate(self._gather(refs)):
            if isinstance(res, _Lost):
                self._restart(i, res.error)
                continue
            self.last_chunk_stats.append(res)
            total += int(res["steps"])
        return total

    # ------------------------------------------------------------------ buffers

    def _save_obs(self, env_idx: int, obs: Any) -> None:
        self._last_obs[env_idx] = obs
        for key in self.keys:
            if key is None:
                self.buf_obs[key][env_idx] = obs
            else:
                self.buf_obs[key][env_idx] = obs[key]

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, deepcopy(self.buf_obs))


# --------------------------------------------------------------------------- fan-out


def _chunks(n: int, parts: int) -> list[range]:
    """``range(n)`` split into at most ``parts`` contiguous, near-equal chunks."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _replicas(replicas: int | None) -> int:
    return max(1, int(replicas if replicas is not None else _cluster_cpus()))


@dataclass(frozen=True)
class _SavedModel:
    """A saved SB3 model shipped by value (the file may not exist on the worker's node)."""

    name: str
    zip_bytes: bytes
    sidecar_bytes: bytes | None


def _policy_spec(policy: Any) -> Any:
    """What the tasks receive: a name, a saved model's bytes, or the (picklable) policy."""
    from shadowrl.rl.search import BUILTIN_POLICIES

    if isinstance(policy, (str, Path)):
        text = str(policy)
        if text in BUILTIN_POLICIES:
            return text
        path = Path(text)
        if path.suffix == ".zip":
            from shadowrl.rl.agents import sidecar_path

            if not path.is_file():
                raise FileNotFoundError(f"no such policy file: {path}")
            sidecar = sidecar_path(path)
            return _SavedModel(path.name, path.read_bytes(),
                               sidecar.read_bytes() if sidecar.is_file() else None)
        raise ValueError(f"unknown policy {text!r}: use {', '.join(BUILTIN_POLICIES)}, "
                         "a policy .zip, a policy object or a factory env -> policy")
    return policy


def _build_policy(spec: Any, env: Any) -> Any:
    from shadowrl.rl.search import BUILTIN_POLICIES, builtin_policy

    if isinstance(spec, str) and spec in BUILTIN_POLICIES:
        return builtin_policy(spec, env.procedure)
    if isinstance(spec, _SavedModel):
        from shadowrl.rl.agents import load_policy, sidecar_path  # lazily: torch, SB3

        with tempfile.TemporaryDirectory(prefix="shadowrl-policy-") as tmp:
            path = Path(tmp) / (spec.name if spec.name.endswith(".zip") else "policy.zip")
            path.write_bytes(spec.zip_bytes)
            if spec.sidecar_bytes is not None:
                sidecar_path(path).write_bytes(spec.sidecar_bytes)
            return load_policy(path, name=Path(spec.name).stem)
    if hasattr(spec, "act") and hasattr(spec, "reset"):
        return spec
    if callable(spec):
        return spec(env)
    raise TypeError(f"not a policy: {spec!r}")


def _evaluate_chunk(scenario: Scenario, env_kwargs: dict[str, Any], policy_spec: Any,
                    seeds: list[int]) -> list[Any]:
    from shadowrl.rl.env import RollbackEnv
    from shadowrl.rl.evaluate import run_episode

    env = RollbackEnv(scenario, **env_kwargs)
    policy = _build_policy(policy_spec, env)
    return [run_episode(env, policy, s) for s in seeds]


def _plan_costs_chunk(scenario: Scenario, env_kwargs: dict[str, Any], plans: list[Any],
                      seeds: list[int]) -> list[list[float]]:
    from shadowrl.rl.distill import cost_matrix
    from shadowrl.rl.env import RollbackEnv

    return cost_matrix(RollbackEnv(scenario, **env_kwargs), plans, seeds).tolist()


def _rehearse_chunk(scenario: Scenario, seeds: list[int], kwargs: dict[str, Any]) -> list[Any]:
    from shadowrl.rehearsal.runner import rehearse

    return [rehearse(scenario, s, **kwargs) for s in seeds]


_remote_cache: dict[str, Any] = {}


def _remote(fn: Callable[..., Any]) -> Any:
    if fn.__name__ not in _remote_cache:
        _remote_cache[fn.__name__] = ray.remote(fn)
    return _remote_cache[fn.__name__]


def _run_chunks(fn: Callable[..., Any], n: int, seed: int, replicas: int | None,
                args: Callable[[list[int]], tuple[Any, ...]],
                on_item: Callable[[int], None] | None = None) -> list[Any]:
    parts = _chunks(n, _replicas(replicas))
    task = _remote(fn)
    refs = [task.remote(*args([seed + i for i in part])) for part in parts]
    if on_item is not None:
        index = {ref: part for ref, part in zip(refs, parts)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                ray.get(ref)  # raise a failed chunk's error now
                for i in index[ref]:
                    on_item(i)
    out: list[Any] = []
    for chunk in ray.get(refs):
        out.extend(chunk)
    return out


def parallel_evaluate(scenario: str | Path | Scenario, policy: Any, episodes: int, seed: int,
                      replicas: int | None = None, *, env_kwargs: Mapping[str, Any] | None = None,
                      on_episode: Callable[[int], None] | None = None,
                      address: str | None = None) -> list[Any]:
    """:func:`shadowrl.rl.evaluate.evaluate` fanned out over Ray tasks.

    Episode ``i`` uses seed ``seed + i``; the episodes are split into ``replicas`` contiguous
    chunks (default: one per cluster CPU), each run by one task with its own ``RollbackEnv``
    and policy, and returned in seed order, equal to the serial evaluation.

    ``policy``: ``"configured"``, ``"random"``, ``"greedy"``, ``"oracle"``, a path to a saved
    SB3 ``.zip`` (shipped by value, loaded with ``shadowrl.rl.agents.load_policy``), a
    picklable policy object (each task gets its own copy, so state a policy accumulates, such
    as ``OraclePolicy.results``, stays in the tasks) or a picklable factory ``env -> policy``.
    ``env_kwargs`` go to ``RollbackEnv``. Ray is started for the call if needed.
    """
    # loaded in the driver: workers may run elsewhere, or in another working directory
    sc = as_scenario(scenario)
    spec = _policy_spec(policy)
    kwargs = dict(env_kwargs or {})
    if episodes <= 0:
        return []
    with ray_session(address):
        sc_ref, spec_ref = ray.put(sc), ray.put(spec)
        return _run_chunks(_evaluate_chunk, episodes, seed, replicas,
                           lambda seeds: (sc_ref, kwargs, spec_ref, seeds), on_episode)


def parallel_plan_costs(scenario: str | Path | Scenario, plans: Sequence[Any], episodes: int,
                        seed: int, replicas: int | None = None, *,
                        env_kwargs: Mapping[str, Any] | None = None,
                        on_episode: Callable[[int], None] | None = None,
                        address: str | None = None) -> list[list[float]]:
    """The cost of every plan (a :data:`shadowrl.core.plan.Plan`) on every seed ``seed + i``
    (``i < episodes``), each a whole episode from the seed's reset, as rows in seed order:
    :func:`shadowrl.rl.distill.cost_matrix` over ``replicas`` Ray tasks of contiguous seeds.
    ``env_kwargs`` go to ``RollbackEnv``."""
    sc = as_scenario(scenario)
    kwargs = dict(env_kwargs or {})
    if episodes <= 0:
        return []
    with ray_session(address):
        sc_ref, plans_ref = ray.put(sc), ray.put(list(plans))
        return _run_chunks(_plan_costs_chunk, episodes, seed, replicas,
                           lambda seeds: (sc_ref, kwargs, plans_ref, seeds), on_episode)


def parallel_rehearse(scenario: str | Path | Scenario, n_runs: int, seed: int = 0,
                      replicas: int | None = None, *, address: str | None = None,
                      on_run: Callable[[int], None] | None = None,
                      **rehearse_kwargs: Any) -> list[Any]:
    """``[rehearse(scenario, seed + i, **rehearse_kwargs) for i in range(n_runs)]`` over Ray
    tasks (``replicas`` contiguous chunks), in seed order. ``rehearse_kwargs`` (``procedure``,
    ``plan``, ``incident``, ``deviation``, ``record_profile``, ``backend_factory``) must be
    picklable."""
    # loaded in the driver: workers may run elsewhere, or in another working directory
    sc = as_scenario(scenario)
    if n_runs <= 0:
        return []
    with ray_session(address):
        sc_ref, kw_ref = ray.put(sc), ray.put(rehearse_kwargs)
        return _run_chunks(_rehearse_chunk, n_runs, seed, replicas,
                           lambda seeds: (sc_ref, seeds, kw_ref), on_run)


class RayRehearseFn:
    """A ``rehearse_fn`` for :func:`shadowrl.rehearsal.campaign.run_campaign` that keeps
    Ray replicas busy ahead of the campaign.

    A call for seed ``s`` returns ``rehearse(scenario, s, **kwargs)`` computed by a Ray task,
    so the campaign's progress bar, Ctrl-C handling and outputs work unchanged. Seeds after
    ``s`` are fetched ahead in tasks of ``chunk`` consecutive seeds, with at most ``window``
    seeds submitted and not yet returned (default: ``chunk`` per replica, ``chunk`` 4) and
    never seed ``stop`` or later (the campaign's end). Memory therefore holds at most
    ``window`` rehearsals with their profiles, and Ctrl-C loses only the runs in flight:
    every run returned before it is the campaign's. A call with other arguments (another
    scenario or keyword values) starts over. Requires Ray to be initialised (e.g. inside
    :func:`ray_session`); :meth:`cancel` drops unused work::

        with ray_session():
            campaign = run_campaign(sc, 200, seed, rehearse_fn=RayRehearseFn(2, stop=seed+200))
    """

    def __init__(self, replicas: int | None = None, window: int | None = None, *,
                 chunk: int | None = None, stop: int | None = None) -> None:
        self.replicas = replicas
        self.window = window
        self.chunk = chunk
        self.stop = stop
        self._futures: dict[int, tuple[Any, int]] = {}  # seed -> (task ref, index in it)
        self._cache: dict[Any, list[Any]] = {}  # a finished task's results not yet returned
        self._key: tuple[Any, ...] | None = None
        self._args: tuple[Any, Any] | None = None  # the scenario and kwargs, in Ray's store
        self._next = 0  # the next seed to submit
        self._window_chunk: tuple[int, int] | None = None

    def _sizes(self) -> tuple[int, int]:
        """(window, chunk): seeds in flight at most, seeds per task."""
        if self._window_chunk is not None:
            return self._window_chunk
        replicas = _replicas(self.replicas)
        if self.window is not None:
            window = max(1, self.window)
            chunk = self.chunk or max(1, window // replicas)
        else:
            chunk = max(1, self.chunk or 4)
            window = chunk * replicas
        self._window_chunk = (window, max(1, min(chunk, window)))
        return self._window_chunk

    def __call__(self, scenario: Scenario, seed: int, **kwargs: Any) -> Any:
        key = (id(scenario), tuple(sorted((k, id(v)) for k, v in kwargs.items())))
        if key != self._key:
            self.cancel()
            self._key = key
            self._args = (ray.put(scenario), ray.put(kwargs))
        if seed not in self._futures:
            self.cancel(keep_arguments=True)  # work for other seeds: not what is asked now
            self._next = seed
            if self.stop is not None and seed >= self.stop:
                self.stop = None  # asked beyond the end it was told: serve it anyway
        self._fill()
        ref, k = self._futures.pop(seed)
        if ref not in self._cache:
            self._cache[ref] = ray.get(ref)
        results = self._cache[ref]
        result, results[k] = results[k], None
        if not any(r is ref for r, _ in self._futures.values()):
            self._cache.pop(ref, None)
        self._fill()
        return result

    @property
    def in_flight(self) -> list[int]:
        """The seeds submitted and not yet returned, in order."""
        return sorted(self._futures)

    def _fill(self) -> None:
        """Submit whole chunks while the window has room for them."""
        assert self._args is not None
        window, chunk = self._sizes()
        task = _remote(_rehearse_chunk)
        while True:
            n = chunk if self.stop is None else min(chunk, self.stop - self._next)
            if n <= 0 or window - len(self._futures) < n:
                return
            seeds = list(range(self._next, self._next + n))
            ref = task.remote(self._args[0], seeds, self._args[1])
            for k, s in enumerate(seeds):
                self._futures[s] = (ref, k)
            self._next += n

    def cancel(self, *, keep_arguments: bool = False) -> None:
        for ref in {r for r, _ in self._futures.values()}:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished or already gone
                pass
        self._futures.clear()
        self._cache.clear()
        if not keep_arguments:
            self._key, self._args = None, None
