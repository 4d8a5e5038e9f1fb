"""The bench's ceilings against the real broker and database: the bare relay passes every message
through four processes, and the stored relay also leaves one document per message at every hop."""

from __future__ import annotations

from services.ops.devstack import DevStack
from services.ops.relay_ceiling import HOPS, RELAY_DATABASE, measure_relay_ceiling
from services.runtime.documents import connect

MESSAGES = 300


async def stored_documents(stack: DevStack) -> dict[str, int]:
    client = connect(stack.runtime_settings().mongo_url.get_secret_value())
    try:
        database = client[RELAY_DATABASE]
        return {
            name: len(await database[name].find({}, {"_id": 1}).to_list(None))
            for name in await database.list_collection_names()
        }
    finally:
        client.close()


async def test_the_bare_relay_passes_every_message_through_four_hops(stack: DevStack) -> None:
    result = await measure_relay_ceiling(
        stack.bootstrap, messages=MESSAGES, message_bytes=200, timeout_s=90, log_dir=stack.logs
    )

    assert result.complete, result.error
    assert result.delivered == MESSAGES
    assert result.writes_per_hop == 0 and result.documents_written == 0
    assert result.rate_per_s is not None and result.rate_per_s > 0


async def test_the_stored_relay_stores_every_message_once_at_every_hop(stack: DevStack) -> None:
    before = await stored_documents(stack)

    result = await measure_relay_ceiling(
        stack.bootstrap,
        messages=MESSAGES,
        message_bytes=200,
        timeout_s=90,
        mongo_url=stack.runtime_settings().mongo_url.get_secret_value(),
        log_dir=stack.logs,
    )

    assert result.complete, result.error
    assert result.writes_per_hop == 1
    assert result.documents_written == MESSAGES * HOPS
    new = {name: count for name, count in (await stored_documents(stack)).items() if name not in before}
    assert sorted(new.values()) == [MESSAGES] * HOPS, new
