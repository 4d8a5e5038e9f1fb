"""Which incarnation of a topic a record comes from: the topic's id (Kafka's KIP-516).

A document remembers, per topic partition, an offset up to which it absorbed everything (see
`tracking`). Offsets only mean something within one incarnation of a topic: deleted and created
again, or mirrored to another cluster, the topic starts at offset 0 once more, and a floor kept
from before would pass over every new message below it. So the floors are kept per topic id,
which Kafka gives each topic when it is created and never reuses, and a new incarnation starts
with no floor (its duplicates are then recognised by message id alone).

aiokafka asks for metadata at a version without topic ids, so the request is declared here:
Metadata v10, the first to carry them (Apache Kafka 2.8 and later; the Tansu dev broker too).
A broker that does not answer it leaves the floors keyed by the topic name, as before, and says
so once in the log. `kafka_tracking_epoch` is mixed into every label: an operator changes it to
make every topic count as new (a cluster restored in a way that kept topic ids but not offsets).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Mapping
from io import BytesIO
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from .security import aiokafka_kwargs
from .settings import RuntimeSettings

log = structlog.get_logger()

#: Kafka's "no topic id" (a broker that keeps none, or a topic it does not know).
NO_TOPIC_ID = uuid.UUID(int=0)


class _Uuid(AbstractType[uuid.UUID]):
    @classmethod
    def encode(cls, value: uuid.UUID | None) -> bytes:
        return (value or NO_TOPIC_ID).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        return uuid.UUID(bytes=data.read(16))


class MetadataResponse_v10(Response):
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):
    API_KEY = 3
    API_VERSION = 10
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicMetadata(Request[MetadataRequest_v10]):
    API_KEY = 3

    def __init__(self, names: Collection[str]) -> None:
        self._names = list(names)

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        return request_struct_class(
            topics=[(None, name, {}) for name in self._names],
            allow_auto_topic_creation=False,
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
            tags={},
        )


def incarnation_label(topic_id: uuid.UUID | None, epoch: str = "") -> str | None:
    """What a document's floors are keyed by beside the topic name: short, and the same for the
    same topic id and epoch only. None: neither is known (floors keyed by the name alone)."""
    if (topic_id is None or topic_id == NO_TOPIC_ID) and not epoch:
        return None
    known = "" if topic_id is None or topic_id == NO_TOPIC_ID else topic_id.hex
    return hashlib.blake2b(f"{known}/{epoch}".encode(), digest_size=6).hexdigest()


class TopicIdLookup(Protocol):
    async def __call__(self, names: Collection[str]) -> Mapping[str, uuid.UUID | None]: ...


class KafkaTopicIds:
    """Asks the cluster for topic ids, on a connection of its own opened for the question: it is
    asked when a consumer starts and when a partition's offsets go backwards, not per batch."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self._settings = settings
        self._warned = False

    async def __call__(self, names: Collection[str]) -> dict[str, uuid.UUID | None]:
        client = AIOKafkaClient(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id="pharmacy-topic-ids",
            **aiokafka_kwargs(self._settings),
        )
        try:
            await client.bootstrap()
            response: Any = await client.send(client.get_random_node(), _TopicMetadata(names))
        except Exception as error:  # an older broker, a proxy: floors stay keyed by the name
            self._warn(f"the broker did not answer a topic id request: {error!r}")
            return dict.fromkeys(names)
        finally:
            await client.close()
        ids: dict[str, uuid.UUID | None] = dict.fromkeys(names)
        for error_code, name, topic_id, *_ in response.topics:
            if name in ids and error_code == 0 and topic_id != NO_TOPIC_ID:
                ids[name] = topic_id
        if any(topic_id is None for topic_id in ids.values()):
            self._warn(f"no topic id for {sorted(n for n, i in ids.items() if i is None)}")
        return ids

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "replay floors keyed by topic name only: a recreated topic would be mistaken for the old", why=why
            )


class TopicIncarnations:
    """The incarnation label of each consumed topic, looked up again whenever a partition's
    offsets go backwards (the topic was recreated, or the consumer was rewound: the lookup is
    cheap and rare either way)."""

    def __init__(self, lookup: TopicIdLookup | None, epoch: str = "") -> None:
        self._lookup = lookup
        self._epoch = epoch
        self._labels: dict[str, str | None] | None = None
        self._last_offsets: dict[tuple[str, int], int] = {}

    async def labels(self, positions: Collection[tuple[str, int, int]]) -> Mapping[str, str | None]:
        """`positions`: (topic, partition, offset) of a batch's records, in order."""
        went_back = any(offset <= self._last_offsets.get((t, p), -1) for t, p, offset in positions)
        topics = {topic for topic, _, _ in positions}
        if self._labels is None or went_back or not topics <= self._labels.keys():
            ids = await self._lookup(topics) if self._lookup is not None else dict.fromkeys(topics)
            self._labels = {**(self._labels or {}), **{t: incarnation_label(i, self._epoch) for t, i in ids.items()}}
        for topic, partition, offset in positions:
            self._last_offsets[topic, partition] = offset
        return self._labels
