"""The HTTP API (FastAPI): routes, scopes and status codes over ``ServiceState``.

No route computes anything of its own: each reads stored state or queues a job through
``ServiceState``. Read routes need a read (or write) token, triggers and cancels a write
token; ``/healthz``, ``/readyz`` and the dashboard's static files need none.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from shadowrl import __version__
from shadowrl.service import schemas
from shadowrl.service.auth import Principal, TokenTable
from shadowrl.service.limits import BodyLimit, RateLimit
from shadowrl.service.metrics import registry_for, render
from shadowrl.service.state import Conflict, NotFound, ServiceState

DASHBOARD = Path(__file__).parent / "dashboard"
FORMAT_TYPES = {"yaml": "application/yaml", "argo": "application/yaml",
                "chaostoolkit": "application/json", "shell": "text/x-shellscript"}
log = logging.getLogger("shadowrl.service")

Name = Annotated[str, PathParam(pattern=r"^[a-z0-9]([a-z0-9-]{0,62})$",
                                description="a deployment's name from the config")]
JobId = Annotated[int, PathParam(ge=1, le=2**62)]
bearer_scheme = HTTPBearer(auto_error=False, description="a read or write token")
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token, or one the service does not know"}}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS, 403: {"description": "a read token where a write token is needed"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such deployment or job"}}


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None
              ) -> Principal:
    """Who the bearer token is (401 without a known one)."""
    tokens: TokenTable = request.app.state.tokens
    found = tokens.lookup(credentials.credentials) if credentials is not None else None
    if found is None:
        raise HTTPException(401, "a valid bearer token is needed",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


def reader(request: Request, credentials: Credentials) -> Principal:
    return principal(request, credentials)


def writer(request: Request, credentials: Credentials) -> Principal:
    who = principal(request, credentials)
    if not who.allows("write"):
        raise HTTPException(403, f"token {who.name!r} may only read")
    return who


def take_trigger(request: Request, who: Principal) -> None:
    """Within the trigger rate limit, or 429 with Retry-After. Only a trigger that is valid
    and names a configured deployment counts."""
    triggers: RateLimit = request.app.state.triggers
    wait = triggers.take(who.name)
    if wait > 0:
        raise HTTPException(429, f"too many triggers: retry in {wait:.0f} s "
                            "(limits.triggers_per_minute)",
                            headers={"Retry-After": str(max(1, round(wait)))})


Read = Annotated[Principal, Depends(reader)]
Write = Annotated[Principal, Depends(writer)]


def create_app(state: ServiceState, *,  # noqa: C901 (one short function per route)
               on_start: Callable[[], None] | None = None,
               on_stop: Callable[[], None] | None = None) -> FastAPI:
    tokens = TokenTable.from_config(state.cfg)
    triggers = RateLimit(state.cfg.limits.triggers_per_minute, state.cfg.limits.trigger_burst)
    registry = registry_for(state.store, [d.name for d in state.cfg.deployments])

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            if on_stop is not None:
                on_stop()

    app = FastAPI(title="shadowrl", version=__version__, lifespan=lifespan,
                  description="Rollback rehearsals as a service: deployments, their latest "
                  "verdicts, jobs, procedures and metrics (docs/service.md).")
    app.state.tokens, app.state.triggers = tokens, triggers

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    # ------------------------------------------------------------------ public

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> dict[str, Any]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Health, tags=["health"],
             responses={503: {"model": schemas.Health}})
    def readyz() -> Any:
        """The database answers and the scheduler ticks."""
        checks = {}
        try:
            with state.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any database failure means not ready
            checks["database"] = f"error: {type(exc).__name__}"
        checks["scheduler"] = "ok" if state.scheduler.alive else "not running"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             responses=READ_ERRORS)
    def metrics(request: Request, credentials: Credentials) -> Response:
        """Prometheus text format (a read token unless ``auth.public_metrics``)."""
        if not state.cfg.auth.public_metrics:
            principal(request, credentials)
        return Response(render(registry), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ deployments

    @app.get("/api/v1/deployments", response_model=list[schemas.Deployment],
             tags=["deployments"], responses=READ_ERRORS)
    def deployments(_who: Read) -> Any:
        return state.deployments()

    @app.get("/api/v1/deployments/{name}", response_model=schemas.DeploymentDetail,
             tags=["deployments"], responses={**READ_ERRORS, **NOT_FOUND})
    def deployment(name: Name, _who: Read) -> Any:
        return state.describe(name)

    @app.get("/api/v1/deployments/{name}/verdict", response_model=schemas.Verdict,
             tags=["verdicts"], responses={**READ_ERRORS, **NOT_FOUND})
    def verdict(name: Name, _who: Read) -> Any:
        """The latest stored verdict (for Argo Rollouts' web metric: ``{$.healthy}``)."""
        return state.verdict(name)

    @app.get("/api/v1/deployments/{name}/verdicts", response_model=list[schemas.Verdict],
             tags=["verdicts"], responses={**READ_ERRORS, **NOT_FOUND})
    def verdicts(name: Name, _who: Read,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
        """The rehearsal history, newest first."""
        return state.verdicts(name, limit)

    @app.post("/api/v1/deployments/{name}/gate", response_model=schemas.Verdict,
              tags=["verdicts"], responses={**READ_ERRORS, **NOT_FOUND,
                         412: {"model": schemas.GateRefusal}})
    def gate(name: Name, _who: Read, payload: schemas.FlaggerPayload | None = None) -> Any:
        """A Flagger webhook: 200 when the rollback is rehearsed and healthy, 412 when not."""
        state.check_deployment(name)
        try:
            found = state.verdict(name)
        except NotFound as exc:
            return JSONResponse({"detail": str(exc), "verdict": None}, status_code=412)
        if not found["healthy"]:
            reason = "; ".join(found["reasons"]) or "unhealthy"
            return JSONResponse({"detail": f"rollback of {name} is not healthy: {reason}",
                                 "verdict": found}, status_code=412)
        return found

    @app.get("/api/v1/deployments/{name}/procedure", tags=["deployments"],
             response_class=PlainTextResponse,
             responses={**READ_ERRORS, **NOT_FOUND, 200: {"content": {
                 t: {} for t in sorted(set(FORMAT_TYPES.values()))}}})
    def procedure(name: Name, _who: Read,
                  format: Annotated[str, Query(pattern="^(yaml|argo|chaostoolkit|shell)$")]
                  = "yaml") -> Response:
        """The procedure a rollback uses now (the published one, else the configured one)."""
        return Response(state.procedure(name, format), media_type=FORMAT_TYPES[format])

    # ------------------------------------------------------------------ jobs

    @app.post("/api/v1/deployments/{name}/rehearsals", status_code=202,
              response_model=schemas.Job, tags=["jobs"],
              responses={**WRITE_ERRORS, **NOT_FOUND, 409: {}, 429: {}})
    def trigger_rehearsal(name: Name, who: Write, request: Request,
                          body: schemas.RehearsalTrigger | None = None) -> Any:
        body = body or schemas.RehearsalTrigger()
        state.check_rehearsal(name, body.at)
        take_trigger(request, who)
        job = state.trigger_rehearsal(name, body.runs, body.seed, body.at)
        log.info("job %s: rehearsal of %s triggered by token %s", job["id"], name, who.name)
        return job

    @app.post("/api/v1/deployments/{name}/optimizations", status_code=202,
              response_model=schemas.Job, tags=["jobs"],
              responses={**WRITE_ERRORS, **NOT_FOUND, 409: {}, 429: {}})
    def trigger_optimization(name: Name, who: Write, request: Request,
                             body: schemas.OptimizationTrigger | None = None) -> Any:
        body = body or schemas.OptimizationTrigger()
        state.check_optimization(name)
        take_trigger(request, who)
        job = state.trigger_optimization(name, body.method, body.episodes)
        log.info("job %s: optimization of %s triggered by token %s", job["id"], name,
                 who.name)
        return job

    @app.get("/api/v1/jobs", response_model=list[schemas.Job], tags=["jobs"],
             responses={**READ_ERRORS, **NOT_FOUND})
    def jobs(_who: Read,
             deployment: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,63}$")] = None,
             status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|"
                                                 "cancelled|interrupted)$")] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
        return state.jobs(deployment, status, limit)

    @app.get("/api/v1/jobs/{job_id}", response_model=schemas.Job, tags=["jobs"],
             responses={**READ_ERRORS, **NOT_FOUND})
    async def job(job_id: JobId, _who: Read,
                  since: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                  wait: Annotated[float, Query(ge=0, le=30)] = 0.0) -> Any:
        """A job; with ``since`` (a revision), waits up to ``wait`` seconds for a change
        (a long poll that holds no worker thread while it waits)."""
        return await state.wait_job(job_id, since=since, wait_s=wait)

    @app.post("/api/v1/jobs/{job_id}/cancel", status_code=202, response_model=schemas.Job,
              tags=["jobs"], responses={**WRITE_ERRORS, **NOT_FOUND})
    def cancel(job_id: JobId, who: Write) -> Any:
        job = state.cancel(job_id)
        log.info("job %s: cancel asked by token %s", job_id, who.name)
        return job

    @app.get("/api/v1/jobs/{job_id}/timeline", response_model=schemas.Timeline,
             tags=["jobs"], responses={**READ_ERRORS, **NOT_FOUND})
    def timeline(job_id: JobId, _who: Read,
                 run: Annotated[int | None, Query(ge=0, le=100_000)] = None) -> Any:
        """One run's edge timeline (default: the run with the most failed requests)."""
        return state.timeline(job_id, run)

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True, check_dir=False),
              name="dashboard")
    app.add_middleware(BodyLimit, max_bytes=state.cfg.limits.max_request_bytes)
    return app
