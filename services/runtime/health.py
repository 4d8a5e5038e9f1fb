"""Health of one service process, served over HTTP (`http_host`:`http_port`) with its metrics.

* `/health/live`: the process answers and, once the service runs, its consumers still consume and
  no handler is stuck (503 with a one-line reason otherwise, so Kubernetes restarts it);
* `/health/ready`: consumers running, broker and database reachable (503 with the failing checks
  otherwise);
* `/metrics`: the service's Prometheus registry (see `observability`);
* any routes a service adds (the courier gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from .observability import ServiceMetrics

log = structlog.get_logger()

Check = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """A health check's own verdict (readiness or liveness), shown as it is (not as an error)."""


async def run_checks(checks: Mapping[str, Check], timeout_s: float) -> tuple[bool, dict[str, str]]:
    """Run every check at once; each passes ("ok") or says why not."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            return f"no answer within {timeout_s:g}s"
        except NotReady as verdict:
            return str(verdict)
        except Exception as error:
            return f"{type(error).__name__}: {str(error)[:200]}"
        return "ok"

    results = await asyncio.gather(*(one(check) for check in checks.values()))
    outcome = dict(zip(checks, results, strict=True))
    return all(result == "ok" for result in results), outcome


def stopped_consumers(subscribers: Iterable[Any]) -> list[str]:
    """The consumer groups whose FastStream subscriber no longer consumes: stopped, or every consume
    task it started has ended. FastStream starts a new task when a consume loop raises, but not when
    the loop returns, which it does once aiokafka's consumer has stopped under it: nothing would
    fetch for that group again until the process restarts."""
    stopped = []
    for subscriber in subscribers:
        tasks = getattr(subscriber, "tasks", ())
        if not subscriber.running or (tasks and all(task.done() for task in tasks)):
            stopped.append(str(getattr(subscriber, "group_id", None) or subscriber))
    return stopped


class HandlersInFlight:
    """The handler calls running now, each with the moment it began (`clock`, in seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._began: dict[int, float] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._began)

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        call = next(self._ids)
        self._began[call] = self._clock()
        try:
            yield
        finally:
            del self._began[call]

    def longest_s(self) -> float:
        """How long the oldest call still running has run (0 when none runs)."""
        now = self._clock()
        return max((now - began for began in self._began.values()), default=0.0)


class HttpEndpoint:
    """`/health/live`, `/health/ready` and `/metrics` (plus any extra routes) served by uvicorn in
    the service's own event loop. It installs no signal handlers: FastStream owns SIGTERM, drains,
    and stops this endpoint last."""

    def __init__(
        self,
        service: str,
        metrics: ServiceMetrics,
        ready_checks: Callable[[], Mapping[str, Check]],
        *,
        host: str,
        port: int,
        check_timeout_s: float,
        live_checks: Callable[[], Mapping[str, Check]] = dict,
        extra_routes: Sequence[Any] = (),
    ) -> None:
        """`live_checks`: what /health/live requires besides an answer (none by default). Keep them
        cheap and local: a liveness that fails on a remote outage restarts pods a restart cannot help."""
        self.service = service
        self._metrics = metrics
        self._ready_checks = ready_checks
        self._live_checks = live_checks
        self._host = host
        self._port = port
        self._timeout_s = check_timeout_s
        self._extra_routes = extra_routes
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.url: str | None = None

    def asgi_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def live(_: Request) -> Response:
            ok, checks = await run_checks(self._live_checks(), self._timeout_s)
            if ok:
                return JSONResponse({"status": "live", "service": self.service})
            failing = (f"{name}: {verdict}" for name, verdict in checks.items() if verdict != "ok")
            reason = "; ".join(failing).replace("\n", " ")
            # Kubernetes records the status code, not the body: the pod's last lines say why it restarted.
            log.warning("not live", reason=reason)
            return JSONResponse({"status": "not live", "service": self.service, "reason": reason}, status_code=503)

        async def ready(_: Request) -> Response:
            ok, checks = await run_checks(self._ready_checks(), self._timeout_s)
            body = {"status": "ready" if ok else "not ready", "service": self.service, "checks": checks}
            return JSONResponse(body, status_code=200 if ok else 503)

        async def metrics(_: Request) -> Response:
            return Response(self._metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

        routes = [Route("/health/live", live), Route("/health/ready", ready), Route("/metrics", metrics)]
        return Starlette(routes=[*routes, *self._extra_routes])

    async def start(self) -> str:
        """Bind (an OSError if the port is taken) and serve in the background; returns the base URL."""
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        try:
            sock = _listening_socket(self._host, self._port)
        except OSError as error:
            raise RuntimeError(
                f"cannot serve health and metrics on {self._host}:{self._port} (PHARMACY_HTTP_HOST/PORT): {error}"
            ) from error
        port = sock.getsockname()[1]
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = uvicorn.Config(
            self.asgi_app(), lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1
        )
        self._server = Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-endpoint")
        shown = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
