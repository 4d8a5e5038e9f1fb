"""The bench's ceilings against the real broker and database: the bare relay passes every message
through four processes, and the stored relay also leaves one document per message at every hop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pymongo import MongoClient

from services.ops.devstack import DevStack
from services.ops.relay_ceiling import HOPS, RELAY_DATABASE, measure_relay_ceiling

MESSAGES = 300


def stored_documents(mongo_url: str) -> dict[str, int]:
    """Documents per collection of the stored relay's database (read synchronously: it is called
    from the relay's `while_driving` context, between the last message counted and the hops' stop)."""
    with MongoClient(mongo_url) as client:
        database = client[RELAY_DATABASE]
        return {name: len(list(database[name].find({}, {"_id": 1}))) for name in database.list_collection_names()}


async def test_the_bare_relay_passes_every_message_through_four_hops(stack: DevStack) -> None:
    result = await measure_relay_ceiling(
        stack.bootstrap, messages=MESSAGES, message_bytes=200, timeout_s=90, log_dir=stack.logs
    )

    assert result.complete, result.error
    assert result.delivered == MESSAGES
    assert result.writes_per_hop == 0 and result.documents_written == 0
    assert result.rate_per_s is not None and result.rate_per_s > 0


async def test_the_stored_relay_stores_every_message_once_at_every_hop_then_drops_them(stack: DevStack) -> None:
    mongo_url = stack.runtime_settings().mongo_url.get_secret_value()
    while_driving: dict[str, dict[str, int]] = {}

    @contextmanager
    def count_at_the_end() -> Iterator[None]:
        while_driving["before"] = stored_documents(mongo_url)
        yield
        while_driving["after"] = stored_documents(mongo_url)

    result = await measure_relay_ceiling(
        stack.bootstrap,
        messages=MESSAGES,
        message_bytes=200,
        timeout_s=90,
        mongo_url=mongo_url,
        log_dir=stack.logs,
        while_driving=count_at_the_end,
    )

    assert result.complete, result.error
    assert result.writes_per_hop == 1
    assert result.documents_written == MESSAGES * HOPS
    assert sorted(while_driving["before"].values()) in ([], [0] * HOPS)
    assert sorted(while_driving["after"].values()) == [MESSAGES] * HOPS, while_driving
    assert stored_documents(mongo_url) == {}, "the stored relay's collections are dropped afterwards"
