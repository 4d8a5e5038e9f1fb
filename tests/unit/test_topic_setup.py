"""Topic creation checks the broker's answer (`services.runtime.topic_setup`), with a stand-in admin
client: aiokafka returns per-topic error codes instead of raising, so a replication factor the
cluster cannot meet, a missing permission or a cluster policy would otherwise pass as "created"."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest

from pharmacy_contracts.topics import ALL_TOPICS
from services.runtime import topic_setup
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_setup import TopicSetupError, create_topics, topic_plans

TopicError = namedtuple("TopicError", "topic error_code error_message")
CreateAnswer = namedtuple("CreateAnswer", "throttle_time_ms topic_errors")
Resource = namedtuple("Resource", "error_code error_message resource_type resource_name config_entries")
Entry = namedtuple("Entry", "config_names config_value read_only config_source is_sensitive config_synonyms")
ConfigsAnswer = namedtuple("ConfigsAnswer", "throttle_time_ms resources")

SETTINGS = RuntimeSettings(kafka_topic_partitions=4, kafka_replication_factor=3)


class Admin:
    """Answers as a broker would; `refuse` maps topic names to (code, message) for creation."""

    def __init__(self, existing: dict[str, dict[str, Any]] | None = None) -> None:
        self.topics: dict[str, dict[str, Any]] = dict(existing or {})
        self.refuse: dict[str, tuple[int, str]] = {}
        self.created: list[str] = []
        self.closed = False

    def __call__(self, **_: Any) -> Admin:
        return self

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def create_topics(self, new_topics: list[Any]) -> CreateAnswer:
        answers = []
        for topic in new_topics:
            code, message = self.refuse.get(topic.name, (0, None))
            if code == 0:
                self.created.append(topic.name)
                self.topics[topic.name] = {
                    "partitions": topic.num_partitions,
                    "replicas": topic.replication_factor,
                    "configs": dict(topic.topic_configs),
                }
            answers.append(TopicError(topic.name, code, message))
        return CreateAnswer(0, answers)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "topic": name,
                "error_code": 0,
                "partitions": [
                    {"partition": i, "replicas": list(range(self.topics[name]["replicas"]))}
                    for i in range(self.topics[name]["partitions"])
                ],
            }
            for name in names
        ]

    async def describe_configs(self, resources: list[Any]) -> list[ConfigsAnswer]:
        answered = [
            Resource(
                0,
                None,
                2,
                r.name,
                [Entry(k, v, False, 5, False, []) for k, v in self.topics[r.name]["configs"].items()],
            )
            for r in resources
        ]
        return [ConfigsAnswer(0, answered)]


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Admin:
    stand_in = Admin()
    monkeypatch.setattr(topic_setup, "AIOKafkaAdminClient", stand_in)
    return stand_in


def test_every_topic_and_its_dead_letters_are_planned_with_the_configs_operators_expect() -> None:
    plans = {plan.name: plan for plan in topic_plans(SETTINGS)}
    assert set(plans) == {t.name for t in ALL_TOPICS} | {t.dead_letter_topic for t in ALL_TOPICS}
    main, dead = plans[ALL_TOPICS[0].name], plans[ALL_TOPICS[0].dead_letter_topic]
    assert (main.partitions, main.replication_factor) == (4, 3)
    assert main.configs == {"cleanup.policy": "delete", "min.insync.replicas": "2"}
    assert dead.configs == {
        "cleanup.policy": "delete",
        "min.insync.replicas": "2",
        "retention.ms": str(90 * 86_400_000),
    }


@pytest.mark.parametrize(("factor", "insync"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_follows_the_replication_factor_unless_set(factor: int, insync: int) -> None:
    assert RuntimeSettings(kafka_replication_factor=factor).kafka_min_insync_replicas_value() == insync
    assert (
        RuntimeSettings(kafka_replication_factor=factor, kafka_min_insync_replicas=3).kafka_min_insync_replicas_value()
        == 3
    )


async def test_topics_are_created_with_their_configs_then_checked(admin: Admin) -> None:
    created = await create_topics(SETTINGS)
    assert sorted(created) == sorted(plan.name for plan in topic_plans(SETTINGS))
    assert admin.topics[ALL_TOPICS[0].dead_letter_topic]["configs"]["retention.ms"] == str(90 * 86_400_000)
    assert await create_topics(SETTINGS) == [], "the second run creates nothing and finds everything as asked"
    assert admin.closed


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (38, "Replication factor: 3 larger than available brokers: 1."),
        (29, "Topic authorization failed."),
        (44, "policy"),
    ],
    ids=["replication-factor", "not-authorised", "policy-violation"],
)
async def test_a_topic_the_broker_refuses_fails_the_setup_naming_it(admin: Admin, code: int, message: str) -> None:
    refused = ALL_TOPICS[1].name
    admin.refuse[refused] = (code, message)
    with pytest.raises(TopicSetupError) as raised:
        await create_topics(SETTINGS)
    assert f"{refused}: error {code} ({message})" in str(raised.value)
    assert admin.closed


async def test_a_topic_created_meanwhile_by_someone_else_is_no_error(admin: Admin) -> None:
    """Not listed when we looked, created (as asked) before our request landed: "already exists"."""
    name = ALL_TOPICS[0].name
    plan = next(p for p in topic_plans(SETTINGS) if p.name == name)
    admin.refuse[name] = (36, "Topic with this name already exists.")
    admin.topics[name] = {"partitions": 4, "replicas": 3, "configs": dict(plan.configs)}
    listed = admin.list_topics

    async def listed_before_it_was_made() -> list[str]:
        return [t for t in await listed() if t != name]

    admin.list_topics = listed_before_it_was_made  # type: ignore[method-assign]
    created = await create_topics(SETTINGS)
    assert name not in created and len(created) == len(topic_plans(SETTINGS)) - 1


async def test_existing_topics_not_as_the_settings_ask_fail_the_setup_saying_what_differs(admin: Admin) -> None:
    await create_topics(SETTINGS)
    dead = ALL_TOPICS[2].dead_letter_topic
    admin.topics[ALL_TOPICS[0].name]["partitions"] = 2
    admin.topics[ALL_TOPICS[1].name]["replicas"] = 1
    admin.topics[dead]["configs"]["retention.ms"] = "604800000"
    with pytest.raises(TopicSetupError) as raised:
        await create_topics(SETTINGS)
    said = str(raised.value)
    assert f"{ALL_TOPICS[0].name}: 2 partitions, the settings ask for 4" in said
    assert f"{ALL_TOPICS[1].name}: replication factor 1, the settings ask for 3" in said
    assert f"{dead}: retention.ms is '604800000', the settings ask for '{90 * 86_400_000}'" in said
    assert f"--entity-name {dead} --add-config retention.ms={90 * 86_400_000}" in said
