"""Creating the registry's topics the way operators expect, and checking the broker's answer.

Every topic of `pharmacy_contracts.topics` (and its `.dlq` dead-letter topic) gets the partitions
and replication factor of the settings and the configs declared here: `min.insync.replicas`, so
that `acks=all` means more than the leader alone (an outbox is cleared on that confirmation),
`cleanup.policy=delete`, and for dead-letter topics a retention long enough for a person to find
and replay them. The broker answers topic creation per topic, without raising: every answer but
"already exists" fails the setup, and then every topic is checked against what was asked
(partitions, replication factor, configs), so that a cluster policy or a topic created earlier by
hand cannot pass silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pharmacy_contracts.topics import ALL_TOPICS

from .security import aiokafka_kwargs
from .settings import RuntimeSettings

NO_ERROR = 0
TOPIC_ALREADY_EXISTS = 36


class TopicSetupError(RuntimeError):
    """The broker refused a topic, or a topic is not as the settings ask."""


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


def topic_plans(settings: RuntimeSettings, *, with_dead_letters: bool = True) -> list[TopicPlan]:
    common = {"cleanup.policy": "delete", "min.insync.replicas": str(settings.kafka_min_insync_replicas_value())}
    dead_letters = {**common, "retention.ms": str(settings.kafka_dead_letter_retention_ms)}
    sized = {"partitions": settings.kafka_topic_partitions, "replication_factor": settings.kafka_replication_factor}
    plans = [TopicPlan(t.name, configs=common, **sized) for t in ALL_TOPICS]
    if with_dead_letters:
        plans += [TopicPlan(t.dead_letter_topic, configs=dead_letters, **sized) for t in ALL_TOPICS]
    return plans


async def create_topics(settings: RuntimeSettings, *, with_dead_letters: bool = True) -> list[str]:
    """Create the topics that do not exist yet, then check every one; returns the names created.
    Raises `TopicSetupError` saying what is wrong with which topic."""
    plans = topic_plans(settings, with_dead_letters=with_dead_letters)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **aiokafka_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [plan for plan in plans if plan.name not in existing]
        answers = []
        if wanted:
            response = await admin.create_topics(
                [NewTopic(p.name, p.partitions, p.replication_factor, topic_configs=dict(p.configs)) for p in wanted]
            )
            answers = _topic_errors(response)
            refused = [
                f"{topic}: error {code} ({message or 'no message'})"
                for topic, code, message in answers
                if code not in (NO_ERROR, TOPIC_ALREADY_EXISTS)  # created meanwhile by someone else: checked below
            ]
            if refused:
                raise TopicSetupError("the broker refused to create topics:\n  " + "\n  ".join(refused))
        problems = await _check(admin, plans)
        if problems:
            raise TopicSetupError("topics are not as the settings ask:\n  " + "\n  ".join(problems))
        return [topic for topic, code, _ in answers if code == NO_ERROR]
    finally:
        await admin.close()


async def _check(admin: AIOKafkaAdminClient, plans: Sequence[TopicPlan]) -> list[str]:
    by_name = {plan.name: plan for plan in plans}
    problems = []
    for described in await admin.describe_topics(list(by_name)):
        plan = by_name[described["topic"]]
        if described["error_code"] != NO_ERROR:
            problems.append(f"{plan.name}: cannot be described (error {described['error_code']})")
            continue
        partitions = described["partitions"]
        if len(partitions) != plan.partitions:
            problems.append(f"{plan.name}: {len(partitions)} partitions, the settings ask for {plan.partitions}")
        factors = sorted({len(p["replicas"]) for p in partitions})
        if factors != [plan.replication_factor]:
            problems.append(
                f"{plan.name}: replication factor {'/'.join(map(str, factors))}, "
                f"the settings ask for {plan.replication_factor}"
            )
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in by_name]
    for response in await admin.describe_configs(resources):
        for error_code, message, _type, name, entries, *_ in response.resources:
            if error_code != NO_ERROR:
                problems.append(f"{name}: configs cannot be read (error {error_code}: {message})")
                continue
            actual = {entry[0]: entry[1] for entry in entries}
            for key, value in by_name[name].configs.items():
                if actual.get(key) != value:
                    fix = (
                        "kafka-configs.sh --bootstrap-server … --alter "
                        f"--entity-type topics --entity-name {name} --add-config {key}={value}"
                    )
                    problems.append(f"{name}: {key} is {actual.get(key)!r}, the settings ask for {value!r} ({fix})")
    return problems


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error code, message) from any version of the CreateTopics answer."""
    return [(entry[0], entry[1], entry[2] if len(entry) > 2 else None) for entry in response.topic_errors]
