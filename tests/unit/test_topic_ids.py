"""Offset floors are kept per incarnation of a topic (its topic id), so a topic deleted and created
again, or mirrored to another cluster, is never mistaken for the one a floor was kept from."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import pytest
from typer.testing import CliRunner

from services.runtime.settings import RuntimeSettings
from services.runtime.store import Tracking
from services.runtime.topic_ids import NO_TOPIC_ID, KafkaTopicIds, TopicIncarnations, incarnation_label
from services.runtime.tracking import Position

OLD, NEW = uuid.uuid4(), uuid.uuid4()


class Cluster:
    """Answers topic id requests and counts them."""

    def __init__(self, ids: dict[str, uuid.UUID | None]) -> None:
        self.ids = ids
        self.asked: list[set[str]] = []

    async def __call__(self, names: Collection[str]) -> dict[str, uuid.UUID | None]:
        self.asked.append(set(names))
        return {name: self.ids.get(name) for name in names}


def test_a_floor_of_the_old_incarnation_does_not_cover_the_new_one() -> None:
    before = Position("inventory.commands.v1", 2, offset=40, floor=39, incarnation=incarnation_label(OLD))
    tracking = Tracking().after("m-40", before)
    assert tracking.absorbed("m-other", Position("inventory.commands.v1", 2, 12, 11, incarnation_label(OLD)))
    # The same topic name and partition, created again: its offset 12 is a new message.
    assert not tracking.absorbed("m-new", Position("inventory.commands.v1", 2, 12, 11, incarnation_label(NEW)))


def test_labels_are_stable_short_and_tell_ids_and_epochs_apart() -> None:
    assert incarnation_label(OLD) == incarnation_label(uuid.UUID(OLD.hex))
    assert len(incarnation_label(OLD) or "") == 12
    assert incarnation_label(OLD) != incarnation_label(NEW)
    assert incarnation_label(OLD, "2") != incarnation_label(OLD)
    # No id known and no epoch: floors keyed by the name alone, as documents kept them before.
    assert incarnation_label(None) is None and incarnation_label(NO_TOPIC_ID) is None
    assert incarnation_label(None, "2") is not None
    assert Position("a.b", 1, 5, 4).key == "a_b:1"
    assert Position("a.b", 1, 5, 4, "abc").key == "a_b~abc:1"


async def test_ids_are_asked_once_and_again_when_a_partition_goes_back() -> None:
    cluster = Cluster({"t": OLD})
    incarnations = TopicIncarnations(cluster)
    assert (await incarnations.labels([("t", 0, 10), ("t", 0, 11)]))["t"] == incarnation_label(OLD)
    await incarnations.labels([("t", 0, 12), ("t", 1, 3)])
    assert len(cluster.asked) == 1, "batches moving forward ask nothing"
    cluster.ids["t"] = NEW  # deleted and created again: its offsets start over
    assert (await incarnations.labels([("t", 0, 0)]))["t"] == incarnation_label(NEW)
    assert len(cluster.asked) == 2


async def test_a_topic_first_seen_later_is_asked_about() -> None:
    cluster = Cluster({"t": OLD, "u": NEW})
    incarnations = TopicIncarnations(cluster, epoch="7")
    await incarnations.labels([("t", 0, 1)])
    labels = await incarnations.labels([("u", 0, 1)])
    assert labels == {"t": incarnation_label(OLD, "7"), "u": incarnation_label(NEW, "7")}
    assert cluster.asked == [{"t"}, {"u"}]


async def test_without_a_lookup_floors_stay_keyed_by_name_unless_an_epoch_is_set() -> None:
    assert (await TopicIncarnations(None).labels([("t", 0, 1)])) == {"t": None}
    assert (await TopicIncarnations(None, epoch="2").labels([("t", 0, 1)]))["t"] == incarnation_label(None, "2")


async def test_a_broker_that_gives_no_ids_leaves_floors_keyed_by_name() -> None:
    unreachable = RuntimeSettings(kafka_bootstrap_servers="127.0.0.1:1")
    assert await KafkaTopicIds(unreachable)(["t", "u"]) == {"t": None, "u": None}


def test_the_operator_sees_each_topics_id_and_which_have_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from pharmacy_contracts import topics
    from services.cli import main

    monkeypatch.setattr(main, "KafkaTopicIds", lambda settings: Cluster({topics.COURIER_UPDATES.name: OLD}))
    monkeypatch.setenv("PHARMACY_KAFKA_TRACKING_EPOCH", "after-restore")
    result = CliRunner().invoke(main.app, ["topic-ids"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith(topics.COURIER_UPDATES.name)]
    assert line.split() == [topics.COURIER_UPDATES.name, str(OLD)]
    assert "tracking epoch: after-restore" in result.output
    assert "without an id" in result.output
