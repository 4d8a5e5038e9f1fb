"""Consumer lag of the services' groups: how far each is behind the end of its topics."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from services.consultation.app import create_app as consultation_app
from services.consultation.settings import ConsultationSettings
from services.courier.app import create_app as courier_app
from services.courier.settings import CourierSettings
from services.inventory.app import create_app as inventory_app
from services.inventory.settings import InventorySettings
from services.prescription.app import create_app as prescription_app
from services.prescription.settings import PrescriptionSettings
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    lag: int


def service_groups(settings: RuntimeSettings) -> dict[str, tuple[str, ...]]:
    """Every consumer group of the four services and the topics it reads, taken from the apps
    themselves so the list cannot drift from the code (building an app connects to nothing)."""
    base = settings.model_dump()
    apps = [
        consultation_app(ConsultationSettings(**base)),
        prescription_app(PrescriptionSettings(**base)),
        inventory_app(InventorySettings(**base)),
        courier_app(CourierSettings(**base)),
    ]
    return {sub.group_id: tuple(sub.topic_names) for app in apps for sub in app.broker.subscribers}


async def consumer_lag(settings: RuntimeSettings) -> list[GroupLag]:
    """Per group and topic: end offsets minus committed offsets, summed over partitions. Read with
    manually assigned consumers, so measuring never joins (or disturbs) a group."""
    lags = []
    for group, topic_names in service_groups(settings).items():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            **aiokafka_kwargs(settings),
        )
        await consumer.start()
        try:
            for topic in topic_names:
                await consumer._client.force_metadata_update()  # metadata of topics we do not subscribe to
                partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
                ends = await consumer.end_offsets(partitions)
                behind = 0
                for partition in partitions:
                    # Clamped: after a multi-record batch the dev broker reports a high-water mark
                    # below the real end, so a caught-up group would otherwise show negative lag.
                    behind += max(0, ends[partition] - ((await consumer.committed(partition)) or 0))
                lags.append(GroupLag(group, topic, behind))
        finally:
            await consumer.stop()
    return lags
