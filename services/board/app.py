"""The live board's ASGI app: follows the public topics, serves the page, its state and its updates.

GET /            the page (static HTML, JS and CSS; no build step, nothing from the internet)
GET /api/state   the board as JSON
GET /events      server-sent events: the board at once, then again whenever it changes (throttled)
GET /health      200 once the board follows the topics, 503 before
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import structlog
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pharmacy_contracts import topics
from pharmacy_contracts.envelope import Envelope
from services.runtime.security import aiokafka_kwargs

from .county_map import EMPTY_MAP, fold_map_all, svg
from .projection import EMPTY, fold_all, snapshot
from .settings import BoardSettings

log = structlog.get_logger()
STATIC = Path(__file__).parent / "static"
FOLLOWED = (
    topics.CONSULTATION_INTAKE,
    topics.PRESCRIPTION_DECISIONS,
    topics.INVENTORY_EVENTS,
    topics.COURIER_DELIVERIES,
    topics.PRESCRIPTION_FORMULARY,  # only for the drugs' names: stock events carry codes
    topics.COURIER_DISPATCH,  # only for the rounds' plans on the county picture (villages, no doors)
)
RETRY_AFTER_S = 2.0


class LiveBoard:
    """The folded board and a version that changes with it; pages wait for a newer version."""

    def __init__(self, latest: int) -> None:
        self.latest = latest
        self.board = EMPTY
        self.county = EMPTY_MAP
        self.version = 0
        self.unreadable = 0
        self.following = False
        self._changed = asyncio.Event()
        self._rendered: tuple[int, bytes] = (-1, b"")

    def apply(self, events: Iterable[Envelope], unreadable: int = 0) -> None:
        events = list(events)
        board, county = fold_all(self.board, events), fold_map_all(self.county, events)
        self.unreadable += unreadable
        if board is not self.board or county is not self.county:
            self.board, self.county = board, county
            self._bump()

    def reset(self) -> None:
        """Back to empty, before reading the topics from their beginning again."""
        self.board, self.county, self.unreadable = EMPTY, EMPTY_MAP, 0
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_since(self, version: int) -> None:
        while self.version == version:
            await self._changed.wait()

    def state_json(self) -> bytes:
        """The snapshot, serialised once per version however many pages are open."""
        version, body = self._rendered
        if version != self.version:
            state = snapshot(self.board, latest=self.latest) | {
                "version": self.version,
                "following": self.following,
                "unreadable": self.unreadable,
            }
            self._rendered = version, body = self.version, json.dumps(state, separators=(",", ":")).encode()
        return body


async def follow(settings: BoardSettings, live: LiveBoard) -> None:
    """Read the followed topics from their beginning, forever, without a consumer group (a
    viewer never takes messages from a service). After a lost connection, start over from empty."""
    while True:
        consumer = AIOKafkaConsumer(
            *(topic.name for topic in FOLLOWED),
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            client_id=f"pharmacy-board-{uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            **aiokafka_kwargs(settings),
        )
        try:
            await consumer.start()
            live.reset()
            live.following = True
            log.info("board following topics", topics=[topic.name for topic in FOLLOWED])
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                events, unreadable = [], 0
                for partition, records in batches.items():
                    topic = topics.BY_NAME[partition.topic]
                    for record in records:
                        try:
                            events.append(topic.parse(record.value))
                        except ValidationError:
                            unreadable += 1
                if events or unreadable:
                    live.apply(events, unreadable)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            live.following = False
            log.warning("board lost the broker; starting over", error=repr(error), retry_in_s=RETRY_AFTER_S)
            await asyncio.sleep(RETRY_AFTER_S)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


def create_app(settings: BoardSettings, live: LiveBoard | None = None, *, follow_topics: bool = True) -> Starlette:
    """The board app. Tests pass their own `live` board and `follow_topics=False` to feed it directly."""
    live = live or LiveBoard(settings.board_latest_prescriptions)
    min_interval = 1 / settings.board_updates_per_second

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def state(_: Request) -> Response:
        return Response(live.state_json(), media_type="application/json")

    async def county(_: Request) -> Response:
        return Response(svg(live.county), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def health(_: Request) -> Response:
        body = {"status": "ok" if live.following else "starting", "events": live.board.events}
        return JSONResponse(body, status_code=200 if live.following else 503)

    async def events(_: Request) -> Response:
        async def stream() -> AsyncIterator[dict[str, str]]:
            while True:
                version = live.version
                yield {"event": "state", "data": live.state_json().decode()}
                await asyncio.sleep(min_interval)  # changes within the interval go out together
                await live.changed_since(version)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        follower = asyncio.create_task(follow(settings, live)) if follow_topics else None
        log.info("board started", url=f"http://{settings.board_host}:{settings.board_port}/")
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/state", state),
            Route("/county.svg", county),
            Route("/events", events),
            Route("/health", health),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.live = live
    return app
