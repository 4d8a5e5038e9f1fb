"""Settings every service reads from the environment (prefix `PHARMACY_`)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Defaults point at the embedded dev stack on loopback (see `make up`).

    On Apache Kafka set `PHARMACY_KAFKA_ENABLE_IDEMPOTENCE=true`; the dev broker (Tansu) refuses
    idempotent producers. `PHARMACY_KAFKA_FETCH_MAX_WAIT_MS` is low because Tansu answers a fetch
    with nothing new only after part of the wait (~115 ms of 500 ms, measured), which every idle hop
    adds to a prescription's latency; on Apache Kafka the default 500 ms only bounds idle polling.
    """

    model_config = SettingsConfigDict(env_prefix="PHARMACY_", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    kafka_acks: Literal["all", "1", "0"] = "all"
    kafka_enable_idempotence: bool = False
    kafka_linger_ms: int = Field(default=0, ge=0)
    kafka_max_batch_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Producer batch per partition (aiokafka's 16 KiB halves throughput)"
    )
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=1)
    kafka_group_prefix: str = "pharmacy"
    kafka_tracking_epoch: str = Field(
        default="",
        max_length=64,
        description="Mixed into every topic's incarnation: change it (and restart) to make every topic count as new, "
        "so no offset floor kept from before applies (a cluster restored with its topic ids but not its offsets, "
        "or a broker that keeps no topic ids)",
    )
    kafka_topic_partitions: int = Field(default=4, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Replicas that must have a write before acks=all confirms it; default: 2 from a "
        "replication factor of 3 up (so a lost leader cannot take a confirmed event with it), else 1",
    )
    kafka_dead_letter_retention_ms: int = Field(
        default=90 * 24 * 3600 * 1000,
        ge=-1,
        description="How long dead letters are kept for a person to find and replay (-1: for ever); "
        "the broker's default, 7 days, can be shorter than a holiday",
    )

    # Kafka security: PLAINTEXT on the dev stack; SASL and/or TLS wherever the network is shared.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(
        default=None, description="CA bundle to verify the brokers; system CAs if unset"
    )
    max_message_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger messages are dead-lettered unread (reason: too_large)"
    )
    kafka_max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=128 * 1024,
        description="The largest request the producer sends (keep it at or under the broker's message.max.bytes); "
        "a dead letter is cut to fit it",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        # Heartbeats go from a task of their own, so a batch that waits out an outage does not miss
        # them; a short session moves a crashed member's partitions to the others soon.
        description="How long the group waits for a silent member's heartbeat before moving its partitions",
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=3_000, ge=500, description="At most a third of the session timeout"
    )
    kafka_max_poll_interval_ms: int = Field(
        default=300_000,
        ge=20_000,
        description="Longest gap between fetches before the group evicts a member; a database outage is waited "
        "out within a batch for half of it, then the batch is fetched again",
    )
    kafka_max_partition_fetch_bytes: int = Field(
        default=1024 * 1024, ge=64 * 1024, description="The most a consumer fetches from one partition at a time"
    )
    kafka_fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        description="The most one fetch returns across partitions: caps a consumer's memory while it catches up",
    )

    # Tools that publish prescriptions as an upstream system (the CLI, the demo, tests) sign them
    # with this key; every sender id it signs for must have the key registered with consultation.
    signing_key_id: str | None = None
    signing_secret: SecretStr | None = None

    # Consultation derives each patient's delivery code from this key and the prescription id;
    # courier checks the code a courier reports with the same key. Couriers never see the key or
    # the code before the patient reads it out. The simulated patients of the demo and tests use it.
    delivery_code_key: SecretStr | None = None

    # People's credentials (services/runtime/credentials.py). The organisations' keys: courier
    # reports are checked with the first (it also makes couriers' gateway tokens), pharmacists'
    # decisions with the second; a tool that holds one (the dev stack's simulators, a dispatcher's
    # shell) signs as anyone of that kind. A person's own token signs only as that person.
    courier_gateway_key: SecretStr | None = Field(
        default=None,
        description="Key of the courier tokens (`pharmacy couriers token`): the courier service checks every "
        "report's signature with it and serves each courier their own trips at GET /couriers/<id>/trips",
    )
    pharmacist_key: SecretStr | None = Field(
        default=None,
        description="Key of the pharmacist tokens (`pharmacy review token`): the prescription service checks every "
        "pharmacist's decision and cancellation with it",
    )
    courier_key_floor: dict[str, int] = Field(
        default_factory=dict,
        description='Each courier\'s lowest token issue that still counts (JSON, e.g. {"C-CHEN": 2} revokes '
        "C-CHEN's first token once their second is issued); a courier not named: every issue",
    )
    pharmacist_key_floor: dict[str, int] = Field(
        default_factory=dict, description="The same for pharmacists' tokens (PHARMACY_PHARMACIST_KEY_FLOOR)"
    )
    answer_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="How long `pharmacy courier report` and `pharmacy review approve`, `reject` and `cancel` wait "
        "for the service's answer (0: not at all)",
    )
    courier_token: SecretStr | None = Field(
        default=None, description="PHARMACY_COURIER_TOKEN: the courier's own token, which signs their reports"
    )
    pharmacist_token: SecretStr | None = Field(
        default=None, description="PHARMACY_PHARMACIST_TOKEN: the pharmacist's own token, which signs their decisions"
    )
    sweep_interval_s: float = Field(
        default=5.0, gt=0, description="How often each service looks for passed deadlines (reviews, offers, expiry)"
    )
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27117")
    mongo_database: str = "pharmacy"
    # Durability: a warehouse write whose StockReserved is already on Kafka must survive a
    # failover, so writes wait for a majority's journal and reads see majority-committed data.
    mongo_write_concern: str = Field(default="majority", pattern=r"^(majority|[1-9][0-9]*)$")
    mongo_journal: bool = True
    mongo_write_timeout_ms: int = Field(
        default=10_000, ge=1, description="A write not durable by then is retried as an outage (WriteNotDurable)"
    )
    mongo_read_concern: Literal["local", "majority", "linearizable"] = "majority"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    outbox_stale_after_s: float = Field(
        default=5.0, ge=0, description="The relay publishes outbox entries no live write published within this"
    )
    kafka_batch_wait_ms: int = Field(
        default=200,
        ge=1,
        description="How long an idle consumer waits for records before looking again (a record that "
        "arrives ends the wait at once)",
    )
    # Background consumers: projections no prescription waits for on its way (the status, the
    # ledger, the supply history).
    background_wait_ms: int = Field(
        default=2000,
        ge=1,
        # Below the shutdown grace, aiokafka's request timeout and the poll interval by far.
        le=5000,
        description="How long a background consumer gathers records into one batch, from the first one it fetched "
        "(its fetches wait at most this long at the broker)",
    )
    background_max_batch_records: int = Field(
        default=400,
        ge=1,
        # Records of one document in a batch are recognised by id only (see kafka_max_batch_records):
        # a background projection's document (one prescription's status, one patient's history, one
        # ledger line) takes a handful of records in a window, far below the 500 ids it remembers.
        # Memory bounds it: in the 3,000-prescription burst of `make bench`, consultation's peak
        # RSS is about 150 MB with batches of 500 and 168 MB with batches of 2,000.
        le=5000,
        description="Records a background consumer gathers into one batch within background_wait_ms",
    )
    kafka_max_batch_records: int = Field(
        default=250,
        ge=1,
        # A document remembers its last 500 message ids (store.RECENT_MESSAGES); records of the
        # batch in hand are recognised by id only, so a batch must fit with room to spare.
        le=250,
        description="Records a consumer takes at once; their writes share round trips",
    )
    handler_max_attempts: int = Field(default=5, ge=1)
    handler_retry_backoff_s: float = Field(default=0.2, ge=0)
    shutdown_grace_s: float = Field(
        default=8.0, gt=0, description="How long SIGTERM waits for in-flight handlers before abandoning them"
    )

    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    # Operations: health and metrics over HTTP, traces over OTLP (see services/runtime/observability.py).
    http_enabled: bool = Field(default=True, description="Serve /health/live, /health/ready and /metrics")
    http_host: str = Field(default="0.0.0.0", description="0.0.0.0 in a container; the dev stack uses 127.0.0.1")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 takes any free port (logged at start)")
    health_check_timeout_s: float = Field(
        default=1.0, gt=0, description="How long /health/ready waits for the broker and the database each"
    )
    consumer_lag_interval_s: float = Field(
        default=15.0, gt=0, description="How often the consumer lag gauge is refreshed from the broker's end offsets"
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); tracing is off when neither "
        "this nor the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set",
    )

    def group(self, name: str) -> str:
        return f"{self.kafka_group_prefix}.{name}"

    def kafka_acks_value(self) -> str | int:
        return "all" if self.kafka_acks == "all" else int(self.kafka_acks)

    def kafka_min_insync_replicas_value(self) -> int:
        if self.kafka_min_insync_replicas is not None:
            return self.kafka_min_insync_replicas
        return 2 if self.kafka_replication_factor >= 3 else 1
