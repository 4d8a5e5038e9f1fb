"""Fuzz: thousands of malformed messages on every consumed topic, mixed with valid traffic.

The corpus comes from hypothesis strategies that start from a VALID message of each topic
(`model_dump(mode="json")`) and break it: a required field dropped, an unknown field added, a value
of the wrong JSON type, a string over its `max_length` or over `max_message_bytes`, numbers out of
range, naive / malformed / out-of-range timestamps, a wrong `type` discriminator; integers storage
cannot hold (2**63, 10**30), dates at the end of time (9999-12-31), control and bidi-override
characters in text (the hostile messages of issue 13 found each passing the contract); or the whole body
replaced by random bytes, truncated JSON, JSON that is not an object, badly encoded or absurdly
nested JSON. Every payload is checked to be malformed (it is larger than `max_message_bytes`, or
the topic's own parser refuses it); those that happen to be valid are discarded.

Promises checked, with the four services running as processes on a fresh broker and database:

1. no service process dies (same pid before and after), and no traceback is logged outside the
   dead-letter and retry log events;
2. every malformed message is dead-lettered by EVERY consumer group of its topic, with its original
   bytes and the reason `too_large` (over the size limit) or `contract_violation` (anything else;
   `sender_mismatch` for a signed prescription, cancellation, courier report or pharmacist decision
   whose mutated body names someone else than its signer);
3. every valid prescription sent in between the fuzz is delivered, none of the valid traffic is
   dead-lettered, and every consumer group reaches the end of its topics (none is stuck).

When a consumer is stuck, the figures name the record it is stuck on (group, partition, offset,
fuzz key, mutation and what the parser raises for it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, Phase, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pharmacy_contracts import courier as c
from pharmacy_contracts import inventory as inv
from pharmacy_contracts import signing, topics
from pharmacy_contracts.consultation import (
    CancellationAccepted,
    CancellationRequested,
    Coordinates,
    PrescriptionAccepted,
)
from pharmacy_contracts.prescription import (
    ApprovedLine,
    CancellationOrdered,
    DeliveryDetails,
    DrugListed,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionHeld,
    PrescriptionRejected,
    Reason,
    ReviewDecided,
    ReviewEscalated,
)
from services.cli import bus
from services.courier.domain import CourierProfile
from services.ops.devstack import SERVICES, DevStack
from services.ops.lag import consumer_lag, service_groups
from services.prescription.domain import FormularyEntry
from services.runtime import credentials
from services.runtime.settings import RuntimeSettings
from tests.support.scenario import System, prescription_message, scripted_couriers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# ------------------------------------------------------------------------------------------------
# shared helpers: valid base messages, JSON-tree surgery, the hypothesis strategies
# ------------------------------------------------------------------------------------------------

CONSUMED = (
    topics.CONSULTATION_PRESCRIPTIONS,
    topics.CONSULTATION_INTAKE,
    topics.PRESCRIPTION_DECISIONS,
    topics.PRESCRIPTION_REVIEWS,
    topics.PRESCRIPTION_FORMULARY,
    topics.INVENTORY_COMMANDS,
    topics.INVENTORY_EVENTS,
    topics.COURIER_UPDATES,
    topics.COURIER_DELIVERIES,
    topics.COURIER_DISPATCHERS,
)
"""Every topic a service reads (the test checks this against the services' own subscriptions)."""
MAX_BYTES: int = RuntimeSettings.model_fields["max_message_bytes"].default
EXAMPLES_PER_TOPIC = 40  # hypothesis examples per topic ...
BATCH = 10  # ... of this many malformed messages each: 10 x 40 x 10 = 4000 messages
VALID_PRESCRIPTIONS = 30
#: Parser and size refusals; `sender_mismatch` is the signature gate's (consultation.prescriptions.v1 only:
#: prescriptions and cancellations alike are signed there).
ALLOWED_REASONS = {"contract_violation", "too_large", "sender_mismatch"}
SIGNER = "hospital-test"
#: The topics whose records a signature gate checks before they are parsed, and who the fuzz is
#: signed as there: the field of the body that names the signer, and its value in the seeds.
SIGNED_AS = {
    topics.CONSULTATION_PRESCRIPTIONS.name: ("sender_id", SIGNER),
    topics.COURIER_UPDATES.name: ("courier_id", "C-FUZZ"),
    topics.PRESCRIPTION_REVIEWS.name: ("pharmacist_id", "PH-FUZZ"),
}
#: Log events that legitimately carry a traceback (a handler failure being retried or dead-lettered).
TRACEBACK_EVENTS = {"message dead-lettered", "handler kept failing", "handler failed, retrying"}
TIMESTAMP_KEYS = {
    "occurred_at", "issued_at", "valid_until", "date_of_birth", "expiry_date",
    "escalate_at", "expires_at", "held_since", "since",
}  # fmt: skip


def dump(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def from_example(cls: Any, envelope: dict[str, Any], **fields: Any) -> Any:
    """A message of `cls` as its published example has it, with the fuzz's envelope and ids."""
    example = cls.model_json_schema()["examples"][0]
    return cls.model_validate({**example, **envelope, "message_id": f"FUZZ-{cls.__name__}", **fields})


def valid_bases() -> dict[str, list[dict[str, Any]]]:
    """A valid message of every type each consumed topic carries (checked below), as JSON trees."""
    submitted = prescription_message("RX-FUZZ-BASE", [("DRUG-FA", 2), ("DRUG-FB", 1)], sender_id=SIGNER)
    rx = submitted.prescription
    rid = rx.prescription_id
    env = {"correlation_id": rid, "producer": "fuzz", "causation_id": "CAUSE-1"}
    delivery = DeliveryDetails(address=rx.patient.address, contact_phone=rx.patient.phone, cold_chain=True)
    hold = [Reason(code="HIGH_RISK_DRUG", message="needs a pharmacist", item_index=1)]
    held_at = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
    withdrawal = {"reason": "the doctor changed the therapy", "requested_by": "Dr Test"}
    lines = [inv.StockLine(drug_code="DRUG-FA", quantity=2)]
    levels = [inv.StockLevel(drug_code="DRUG-FA", available=5, reserved=2, dispatched=1, quarantined=1)]
    expiry = date(2028, 6, 30)
    lot = {"drug_code": "DRUG-FA", "lot_id": "LOT-FA-1", "expiry_date": expiry}
    moved = [
        inv.Movement(
            kind="reserved", lot_id="LOT-FA-1", drug_code="DRUG-FA", quantity=2, source="available", target="reserved"
        )
    ]
    where = {"prescription_id": rid, "warehouse_id": "WH-FUZZ"}
    held_stock = {**where, "lines": lines, "levels": levels, "movements": moved}
    site = Coordinates(latitude=51.8, longitude=69.4)
    trip = {"prescription_id": rid, "dispatch_id": f"{rid}-D1", "courier_id": "C-FUZZ", "attempt": 1}
    report = {"dispatch_id": f"{rid}-D1", "courier_id": "C-FUZZ", "package_id": rid}
    messages: dict[str, list[Any]] = {
        topics.CONSULTATION_PRESCRIPTIONS.name: [
            submitted,
            CancellationRequested(**env, sender_id=SIGNER, prescription_id=rid, **withdrawal),
        ],
        topics.CONSULTATION_INTAKE.name: [
            PrescriptionAccepted(**env, sender_id=SIGNER, prescription=rx),
            CancellationAccepted(**env, sender_id=SIGNER, prescription_id=rid, **withdrawal),
        ],
        topics.PRESCRIPTION_DECISIONS.name: [
            PrescriptionApproved(
                **env,
                prescription_id=rid,
                patient_id=rx.patient.patient_id,
                lines=[ApprovedLine(drug_code="DRUG-FA", quantity=2, days_supply=30)],
                delivery=delivery,
                reviewed_by="PH-FUZZ",
            ),
            PrescriptionRejected(
                **env,
                prescription_id=rid,
                reasons=[Reason(code="UNKNOWN_DRUG", message="not in the formulary", item_index=0)],
            ),
            PrescriptionHeld(
                **env,
                prescription_id=rid,
                patient_id=rx.patient.patient_id,
                reasons=hold,
                escalate_at=held_at + timedelta(minutes=30),
                expires_at=held_at + timedelta(hours=24),
            ),
            ReviewEscalated(
                **env, prescription_id=rid, held_since=held_at, expires_at=held_at + timedelta(hours=24), reasons=hold
            ),
            PrescriptionCancelled(**env, prescription_id=rid, **withdrawal, was_approved=True),
        ],
        topics.PRESCRIPTION_FORMULARY.name: [
            DrugListed(**env, drug_code="DRUG-FA", name="Fuzz drug", form="tablet", cold_chain=True),
        ],
        topics.PRESCRIPTION_REVIEWS.name: [
            ReviewDecided(**env, prescription_id=rid, decision="approve", pharmacist_id="PH-FUZZ", note="checked"),
            CancellationOrdered(**env, prescription_id=rid, pharmacist_id="PH-FUZZ", reason="therapy stopped"),
        ],
        topics.INVENTORY_COMMANDS.name: [
            inv.WarehouseRegistrationRequested(
                **env, warehouse_id="WH-FUZZ", name="Fuzz pharmacy", kind="township", location=site, requested_by="x"
            ),
            inv.RestockRequested(**env, warehouse_id="WH-FUZZ", **lot, quantity=5, requested_by="x"),
            inv.AdjustmentRequested(
                **env, warehouse_id="WH-FUZZ", **lot_of(lot), delta=-3, reason="broken", requested_by="x"
            ),
            inv.QuarantineDecided(
                **env,
                warehouse_id="WH-FUZZ",
                **lot_of(lot),
                quantity=1,
                decision="release",
                reason="ok",
                requested_by="x",
            ),
        ],
        topics.INVENTORY_EVENTS.name: [
            inv.StockReserved(
                **env,
                **held_stock,
                pickup_location=site,
                picks=[inv.LotPick(**lot, quantity=2)],
            ),
            inv.ReservationFailed(
                **env,
                prescription_id=rid,
                reason="OUT_OF_STOCK",
                shortages=[inv.Shortage(drug_code="DRUG-FA", requested=3, best_available=1)],
            ),
            inv.StockReleased(**env, **held_stock),
            inv.StockDispatched(**env, **held_stock),
            inv.StockReturned(**env, **held_stock),
            inv.StockQuarantined(**env, **held_stock, why="cancelled"),
            inv.StockDelivered(**env, **held_stock),
            inv.StockRestocked(
                **env, warehouse_id="WH-FUZZ", **lot, quantity=4, requested_by="x", level=levels[0], movements=moved
            ),
            inv.StockAdjusted(
                **env,
                warehouse_id="WH-FUZZ",
                **lot_of(lot),
                delta=-1,
                reason="count",
                requested_by="x",
                level=levels[0],
                movements=moved,
            ),
            inv.QuarantineCleared(
                **env,
                warehouse_id="WH-FUZZ",
                **lot_of(lot),
                quantity=1,
                decision="write_off",
                reason="crushed",
                requested_by="x",
                level=levels[0],
                movements=moved,
            ),
            inv.StockCommandRefused(**env, warehouse_id="WH-FUZZ", drug_code="DRUG-FA", reason="below zero"),
            inv.WarehouseRegistered(**env, warehouse_id="WH-FUZZ", name="Fuzz pharmacy", kind="central", location=site),
            inv.LowStock(**env, warehouse_id="WH-FUZZ", drug_code="DRUG-FA", available=3, threshold=20),
            inv.LotNearingExpiry(**env, warehouse_id="WH-FUZZ", **lot, available=3),
            inv.LotExpired(**env, warehouse_id="WH-FUZZ", **lot, removed=3, level=levels[0], movements=moved),
        ],
        topics.COURIER_UPDATES.name: [
            c.CourierReported(**env, **report, status="failed", failure_reason="patient_absent", note="gate locked"),
            c.CourierReported(**env, **report, status="delivered", delivery_code="042917"),
        ],
        topics.COURIER_DELIVERIES.name: [
            c.CourierAssigned(**env, **trip, warehouse_id="WH-FUZZ"),
            c.DeliveryAccepted(**env, **trip),
            c.DeliveryPickedUp(**env, **trip, warehouse_id="WH-FUZZ"),
            c.DeliveryCompleted(**env, **trip, warehouse_id="WH-FUZZ"),
            c.DeliveryFailed(
                **env, **trip, warehouse_id="WH-FUZZ", reason="refused", goods_returned=True, will_retry=True
            ),
            c.DeliveryAbandoned(
                **env,
                prescription_id=rid,
                warehouse_id="WH-FUZZ",
                attempts=3,
                last_reason="other",
                goods_travelled=True,
            ),
            c.DeliveryOfferExpired(**env, **trip),
            c.DeliveryWaiting(**env, prescription_id=rid, warehouse_id="WH-FUZZ", why="no cold-chain courier free"),
            c.DeliveryCodeRejected(**env, **trip, wrong_codes=2),
            c.DeliveryOverdue(**env, prescription_id=rid, stage="on_the_road", since=held_at, courier_id="C-FUZZ"),
            c.DeliveryCancelled(**env, prescription_id=rid, warehouse_id="WH-FUZZ", goods_returned=False),
        ],
        topics.COURIER_DISPATCHERS.name: [
            c.AddressLocated(**env, prescription_id=rid, coordinates=site, located_by="DSP-FUZZ", place="Fuzz village"),
        ],
    }
    # Transfers, re-packs and recalls start from their published examples, at the fuzz's warehouse,
    # prescription and drug.
    fuzz_ids = {"warehouse_id": "WH-FUZZ", "drug_code": "DRUG-FA"}
    messages[topics.INVENTORY_COMMANDS.name] += [
        from_example(inv.TransferShipRequested, env, **fuzz_ids, to_warehouse_id="PH-FUZZ"),
        from_example(inv.TransferReceiptRequested, env, warehouse_id="WH-FUZZ"),
        from_example(inv.LotRecallRequested, env, warehouse_id="WH-FUZZ", lot_id="LOT-FA-1"),
    ]
    messages[topics.INVENTORY_EVENTS.name] += [
        from_example(inv.StockRepacked, env, **held_stock, picks=[inv.LotPick(**lot, quantity=2)]),
        from_example(inv.TransferSuggested, env, **fuzz_ids),
        from_example(inv.TransferShipped, env, **fuzz_ids),
        from_example(inv.TransferReceived, env, **fuzz_ids),
        from_example(inv.TransferClosed, env, **fuzz_ids),
        from_example(inv.LotRecalled, env, warehouse_id="WH-FUZZ", lot_id="LOT-FA-1", drug_code="DRUG-FA"),
        from_example(inv.PrescriptionRecalled, env, prescription_id=rid, lot_id="LOT-FA-1"),
    ]
    assert set(messages) == {topic.name for topic in CONSUMED}
    bases = {name: [m.model_dump(mode="json") for m in found] for name, found in messages.items()}
    for name, docs in bases.items():  # the starting points really are valid, and every message type is fuzzed
        for doc in docs:
            topics.BY_NAME[name].parse(dump(doc))
        carried = {message.model_fields["type"].default for message in topics.BY_NAME[name].messages}
        assert {doc["type"] for doc in docs} == carried, name
    return bases


def lot_of(lot: dict[str, Any]) -> dict[str, Any]:
    """A lot's drug and id, without the expiry (adjustments name the lot only)."""
    return {"drug_code": lot["drug_code"], "lot_id": lot["lot_id"]}


BASES = valid_bases()
ALL_TYPES = sorted({doc["type"] for docs in BASES.values() for doc in docs})


def nodes(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every node of a JSON tree with its path (the root's path is ())."""
    yield path, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from nodes(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from nodes(value, (*path, index))


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def removed(doc: Any, path: tuple[Any, ...]) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return doc


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def is_malformed(topic: topics.Topic, body: bytes) -> bool:
    """Too large for any consumer, or refused by the topic's own parser (whatever it raises)."""
    if len(body) > MAX_BYTES:
        return True
    try:
        topic.parse(body)
    except Exception:
        return True
    return False


def expected_reasons(topic: str, body: bytes) -> set[str]:
    """The dead-letter reasons a malformed message may carry.

    Size is checked first (`too_large`). On the topics whose records are signed (SIGNED_AS) the
    signature gate runs next: the fuzz is signed as the seeds' sender, courier or pharmacist, so a
    body that still reads as JSON but names someone else (a mutation hit that field) is refused as
    `sender_mismatch`, a signature reason. Everything else is for the parser: `contract_violation`."""
    if len(body) > MAX_BYTES:
        return {"too_large"}
    if topic in SIGNED_AS:
        field, signer = SIGNED_AS[topic]
        try:
            data = json.loads(body)
        except ValueError:
            return {"contract_violation"}
        except RecursionError:  # nested too deeply for this process to tell who it names
            return {"contract_violation", "sender_mismatch"}
        claimed = data.get(field) if isinstance(data, dict) else None
        if isinstance(claimed, str) and claimed != signer:
            return {"sender_mismatch"}
    return {"contract_violation"}


json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
OUT_OF_RANGE = [
    1e9, -1e9, -1, 0, -0.0, 0.5, -0.5, 91.0, -91.0, 181.0, -181.0, 10**30, -(10**30), 2**63, 2**64 + 1,
    1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"),
]  # fmt: skip
BAD_TIMESTAMPS = [
    "9999-12-31T23:59:59-01:00",  # in range as written, out of range once in UTC
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:30:00+01:00",
    "2026-01-01T00:00:00+25:00",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00-24:59",
    "2026-02-30T10:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-01T24:00:01Z",
    "2026-01-01T00:00:00 UTC",
    "2026-01-01T00:00:00 Europe/Berlin",
    "2026-01-01T00:00:00[Asia/Almaty]",
    "2026-01-01T00:00:00",
    "2026-01-01",
    "0000-00-00T00:00:00Z",
    "-2026-01-01T00:00:00Z",
    "+12026-01-01T00:00:00Z",
    "yesterday",
    "",
]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]
#: MongoDB keeps 64-bit integers: each of these once passed a contract and failed in storage.
HUGE_INTEGERS = [2**63, 2**63 - 1, 2**64 + 1, 10**30, -(2**63) - 1, -(10**30)]
#: The end of time, as a date and as timestamps (a validity or a lot's expiry that far was accepted).
FAR_DATES = ["9999-12-31", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999+00:00", "3000-01-01T00:00:00Z"]
#: Invisible or reordering characters that made a name display as something it is not.
HIDDEN_CHARACTERS = [
    "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b", "\u2028",
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
]  # fmt: skip


# strategies built once (building st.timezones() and friends on every draw is slow)
MUTATIONS = st.sampled_from(
    ["drop_field"] * 3
    + ["unknown_field"] * 3
    + ["wrong_type"] * 3
    + ["huge_string"] * 2
    + ["out_of_range"] * 3
    + ["bad_timestamp"] * 3
    + ["bad_discriminator"] * 2
    + ["huge_integer"] * 2
    + ["far_date"] * 2
    + ["hidden_character"] * 2
)
MUTATION_COUNT = st.sampled_from([1, 1, 1, 2, 3])
FIELD_NAMES = st.text(min_size=1, max_size=24)
HUGE_CHARS = st.sampled_from(["A", "é", "☃", "𝄞", '"', "\x00"])
HUGE_SIZES = (
    st.integers(10 * 1024, 12 * 1024)
    | st.integers(10 * 1024, 12 * 1024)
    | st.integers(MAX_BYTES + 1, MAX_BYTES + 64 * 1024)
)  # mostly over a field's max_length, sometimes over the message size limit
NUMBERS = st.sampled_from(OUT_OF_RANGE) | st.integers() | st.floats()
TIMESTAMPS = (
    st.sampled_from(BAD_TIMESTAMPS)
    | st.datetimes().map(datetime.isoformat)  # naive
    | st.datetimes(timezones=st.timezones()).map(datetime.isoformat)  # any zone, any year
    | st.dates().map(str)
    | st.text(max_size=30)
    | st.integers()
    | st.floats()
)
DISCRIMINATORS = st.sampled_from(ALL_TYPES) | st.text(max_size=40) | json_values
WHOLE_BODIES = st.sampled_from(
    ["raw_bytes"] * 3
    + ["truncated"] * 2
    + ["non_object"] * 2
    + ["bad_encoding"] * 2
    + ["deep_nesting", "trailing_garbage", "not_json"]
)
ENCODINGS = st.sampled_from(["utf-16", "utf-32", "bom", "latin-1", "invalid_utf8"])
NON_OBJECTS = json_values.filter(lambda v: not isinstance(v, dict))
NESTING = st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])
GARBAGE_TAILS = st.sampled_from([b"x", b"}", b",", b" {}", b"\x00"])


@st.composite
def mutated(draw: st.DrawFn, topic: topics.Topic) -> tuple[str, bytes]:
    """A valid message of the topic, broken by one to three structural mutations."""
    doc = draw(st.sampled_from(BASES[topic.name]))
    kinds = []
    for _ in range(draw(MUTATION_COUNT)):
        kind = draw(MUTATIONS)
        every = list(nodes(doc))
        if kind == "drop_field":
            keyed = [p for p, _ in every if p and isinstance(p[-1], str)]
            if not keyed:
                continue
            doc = removed(doc, draw(st.sampled_from(keyed)))
        elif kind == "unknown_field":
            objects = [p for p, v in every if isinstance(v, dict)]
            if not objects:
                continue
            path = draw(st.sampled_from(objects))
            target = doc if not path else dict(next(v for p, v in every if p == path))
            name = draw(FIELD_NAMES.filter(lambda n, t=target: n not in t))
            doc = replaced(doc, path, {**target, name: draw(json_values)})
        elif kind == "wrong_type":
            path, original = draw(st.sampled_from(every))
            doc = replaced(doc, path, draw(json_values.filter(lambda v, o=original: json_kind(v) != json_kind(o))))
        elif kind == "huge_string":
            if len(dump(doc)) > MAX_BYTES:
                continue  # one oversized string is enough: stay well under the broker's 1 MiB
            path, _ = draw(st.sampled_from(every))
            char = draw(HUGE_CHARS)
            doc = replaced(doc, path, char * max(1, draw(HUGE_SIZES) // (len(dump(char)) - 2)))
        elif kind == "out_of_range":
            numbers = [(p, v) for p, v in every if json_kind(v) == "number"]
            if not numbers:
                continue
            path, original = draw(st.sampled_from(numbers))
            doc = replaced(
                doc,
                path,
                draw(
                    NUMBERS
                    # ints as floats / strings: lax parsing accepts some, and those are discarded below
                    | st.sampled_from([str(original), f"{original} units", original + 0.5, float(original)])
                ),
            )
        elif kind == "bad_timestamp":
            stamps = [p for p, _ in every if p and p[-1] in TIMESTAMP_KEYS]
            if not stamps:
                continue
            doc = replaced(
                doc,
                draw(st.sampled_from(stamps)),
                draw(TIMESTAMPS),
            )
        elif kind == "huge_integer":
            integers = [p for p, v in every if isinstance(v, int) and not isinstance(v, bool)]
            if not integers:
                continue
            doc = replaced(doc, draw(st.sampled_from(integers)), draw(st.sampled_from(HUGE_INTEGERS)))
        elif kind == "far_date":
            stamps = [p for p, _ in every if p and p[-1] in TIMESTAMP_KEYS]
            if not stamps:
                continue
            doc = replaced(doc, draw(st.sampled_from(stamps)), draw(st.sampled_from(FAR_DATES)))
        elif kind == "hidden_character":
            texts = [(p, v) for p, v in every if isinstance(v, str)]
            if not texts:
                continue
            path, original = draw(st.sampled_from(texts))
            at = draw(st.integers(0, len(original)))
            doc = replaced(doc, path, original[:at] + draw(st.sampled_from(HIDDEN_CHARACTERS)) + original[at:])
        elif kind == "bad_discriminator":
            if not isinstance(doc, dict):
                continue
            own = doc.get("type") if isinstance(doc.get("type"), str) else ""
            doc = replaced(
                doc,
                ("type",),
                draw(
                    DISCRIMINATORS
                    | st.sampled_from([own.upper(), f" {own}", f"{own} ", own.replace(".", "_"), own + ".v2"])
                ),
            )
        kinds.append(kind)
    assume(kinds)
    return "+".join(kinds), dump(doc)


@st.composite
def whole_body(draw: st.DrawFn, topic: topics.Topic) -> tuple[str, bytes]:
    """A body that is not a JSON object of the topic at all."""
    doc = draw(st.sampled_from(BASES[topic.name]))
    valid = dump(doc)
    kind = draw(WHOLE_BODIES)
    if kind == "raw_bytes":
        return kind, draw(st.binary(max_size=2048))
    if kind == "truncated":
        return kind, valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "non_object":
        value = draw(NON_OBJECTS | st.just([doc]))
        return kind, json.dumps(value).encode()
    if kind == "bad_encoding":
        how = draw(ENCODINGS)
        if how in ("utf-16", "utf-32"):
            return f"{kind}:{how}", json.dumps(doc, ensure_ascii=False).encode(how)
        if how == "bom":
            return f"{kind}:{how}", b"\xef\xbb\xbf" + valid
        if how == "latin-1":
            return f"{kind}:{how}", json.dumps({**doc, "producer": "Zoë"}, ensure_ascii=False).encode("latin-1")
        strings = [p for p, v in nodes(doc) if isinstance(v, str)]
        path = draw(st.sampled_from(strings))
        marker = "\u2063MARK\u2063"
        body = dump(replaced(doc, path, marker)).replace(marker.encode(), draw(st.sampled_from(BAD_UTF8)))
        return f"{kind}:{how}", body
    if kind == "deep_nesting":
        depth = draw(st.integers(100, 50_000))
        opening, closing = draw(NESTING)
        nested = opening * depth + b"1" + closing * depth
        if draw(st.booleans()):
            return kind, nested
        marker = "\u2063NEST\u2063"
        path = draw(st.sampled_from([p for p, _ in nodes(doc) if p]))
        return kind, dump(replaced(doc, path, marker)).replace(json.dumps(marker, ensure_ascii=False).encode(), nested)
    if kind == "trailing_garbage":
        return kind, valid + draw(GARBAGE_TAILS | st.just(valid))
    return kind, repr(doc).encode()  # a Python dict's repr: single quotes, None, True


@st.composite
def malformed(draw: st.DrawFn, topic: topics.Topic) -> tuple[str, bytes]:
    for _ in range(10):
        kind, body = draw(mutated(topic) if draw(st.integers(0, 9)) < 7 else whole_body(topic))
        if is_malformed(topic, body):
            return kind, body
    assume(False)  # only valid messages came out: discard this example
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Fuzz:
    topic: str
    key: str
    kind: str
    value: bytes

    @property
    def reasons(self) -> set[str]:
        return expected_reasons(self.topic, self.value)


def generate_corpus() -> list[Fuzz]:
    """Run hypothesis once per topic; every example is a batch of malformed messages."""
    corpus: list[Fuzz] = []
    for topic in CONSUMED:
        _collect(topic, corpus)
    return corpus


def _collect(topic: topics.Topic, corpus: list[Fuzz]) -> None:
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_TOPIC,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(batch=st.lists(malformed(topic), min_size=BATCH, max_size=BATCH))
    def collect(batch: list[tuple[str, bytes]]) -> None:
        for kind, body in batch:
            assert is_malformed(topic, body), (topic.name, kind, body[:200])
            corpus.append(Fuzz(topic.name, f"FUZZ-{len(corpus):05d}", kind, body))

    collect()


def fuzz_headers(fuzz: Fuzz, settings: RuntimeSettings) -> list[tuple[str, bytes]]:
    """Labelled JSON like every real message; signed where a signature gate checks it first, so
    that the parser sees it (a prescription as its sender, a report as its courier, a decision as
    its pharmacist)."""
    headers = [("content-type", b"application/json")]
    signer = SIGNED_AS.get(fuzz.topic, (None, None))[1]
    if fuzz.topic == topics.CONSULTATION_PRESCRIPTIONS.name:
        assert settings.signing_key_id and settings.signing_secret
        signed = signing.signature_headers(
            fuzz.value,
            sender_id=SIGNER,
            key_id=settings.signing_key_id,
            secret=settings.signing_secret.get_secret_value().encode(),
        )
    elif fuzz.topic == topics.COURIER_UPDATES.name and signer is not None:
        key = credentials.secret_of(settings.courier_gateway_key)
        assert key is not None
        signed = credentials.signed_by(fuzz.value, signer, credentials.courier_token(key, signer))
    elif fuzz.topic == topics.PRESCRIPTION_REVIEWS.name and signer is not None:
        key = credentials.secret_of(settings.pharmacist_key)
        assert key is not None
        signed = credentials.signed_by(fuzz.value, signer, credentials.pharmacist_token(key, signer))
    else:
        return headers
    return headers + [(k, v.encode()) for k, v in signed.items()]


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    key: str
    group: str
    reason: str
    value: bytes


class Progress:
    """Waiting ends when everything arrived, at a hard deadline, or when nothing moved for `stall_s`
    (a stuck consumer makes no progress, and waiting longer only makes the run slower)."""

    def __init__(self, timeout: float, stall_s: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.stall_s = stall_s
        self.last = time.monotonic()

    def moved(self) -> None:
        self.last = time.monotonic()

    @property
    def over(self) -> bool:
        now = time.monotonic()
        return now > self.deadline or now - self.last > self.stall_s


async def read_dead_letters(settings: RuntimeSettings, wanted: set[tuple[str, str]], progress: Progress) -> list[Any]:
    """Every record of every consumed topic's .dlq, read until `wanted` (key, group) pairs are all
    there or `progress` says to stop waiting."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        partitions = [
            TopicPartition(t.dead_letter_topic, p) for t in CONSUMED for p in range(settings.kafka_topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: set[tuple[str, str]] = set()
        while not progress.over:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch:
                progress.moved()
            for records in batch.values():
                for record in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
                    letter = DeadLetter(
                        topic=headers.get("dlq.topic", "?"),
                        key=(record.key or b"").decode("utf-8", "replace"),
                        group=headers.get("dlq.group", "?"),
                        reason=headers.get("dlq.reason", "?"),
                        value=bytes(record.value or b""),
                    )
                    letters.append(letter)
                    seen.add((letter.key, letter.group))
            if not batch and wanted <= seen:
                return letters
    finally:
        await consumer.stop()
    return letters


def parse_error(fuzz: Fuzz | None) -> str:
    if fuzz is None:
        return "-"
    if len(fuzz.value) > MAX_BYTES:
        return "too large"
    try:
        topics.BY_NAME[fuzz.topic].parse(fuzz.value)
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return "parses"


async def stuck_positions(settings: RuntimeSettings, corpus: dict[str, Fuzz]) -> list[str]:
    """For every consumer group and partition left behind: the record it is stuck on."""
    found = []
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await reader.start()
    try:
        for group, names in service_groups(settings).items():
            probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group)
            await probe.start()
            try:
                for name in names:
                    partitions = [TopicPartition(name, p) for p in range(settings.kafka_topic_partitions)]
                    ends = await probe.end_offsets(partitions)
                    for partition in partitions:
                        committed = await probe.committed(partition) or 0
                        if committed >= ends[partition]:
                            continue
                        reader.assign([partition])
                        reader.seek(partition, committed)
                        batch = await reader.getmany(partition, timeout_ms=3000, max_records=1)
                        record = (batch.get(partition) or [None])[0]
                        key = record.key.decode("utf-8", "replace") if record and record.key else None
                        fuzz = corpus.get(key or "")
                        found.append(
                            f"{group} {name}[{partition.partition}] at offset {committed} (end {ends[partition]}): "
                            f"key={key} kind={fuzz.kind if fuzz else '-'} parse -> {parse_error(fuzz)}; "
                            f"value={bytes(record.value or b'')[:240] if record else None!r}"
                        )
            finally:
                await probe.stop()
    finally:
        await reader.stop()
    return found


def unexpected_tracebacks(services: DevStack) -> dict[str, list[str]]:
    """Log lines of the four services carrying a traceback outside the dead-letter/retry events."""
    found: dict[str, list[str]] = {}
    for name in SERVICES:
        path = services.logs / f"{name}-1.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        bad = []
        for line in lines:
            if "Traceback" not in line and "Error" not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    bad.append(line)
                continue
            if isinstance(event, dict) and "Traceback" in line and event.get("event") not in TRACEBACK_EVENTS:
                bad.append(line)
        found[name] = bad
    return found


# ------------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    messages: list[Fuzz]
    seconds: float


@pytest.fixture(scope="module")
def fuzz_corpus() -> Corpus:
    """Generated before the stack starts (the test asks for it first): on a small machine the idle
    services' polling would otherwise slow hypothesis down several times."""
    started = time.monotonic()
    messages = generate_corpus()
    random.Random(20260101).shuffle(messages)  # interleave the topics
    return Corpus(messages, time.monotonic() - started)


async def test_malformed_messages_on_every_topic_are_dead_lettered_and_valid_traffic_completes(
    fuzz_corpus: Corpus, system: System, services: DevStack
) -> None:
    started = time.monotonic()
    settings = system.settings
    assert settings.max_message_bytes == MAX_BYTES
    pids = {name: services.pid_of(f"{name}-1") for name in SERVICES}
    assert all(pids.values()), pids
    corpus, generated_s = fuzz_corpus.messages, fuzz_corpus.seconds
    groups_of: dict[str, set[str]] = defaultdict(set)
    for group, names in service_groups(settings).items():
        for name in names:
            groups_of[name].add(group)
    assert all(groups_of[t.name] for t in CONSUMED), groups_of
    assert set(groups_of) == {t.name for t in CONSUMED}, "CONSUMED must list exactly the topics the services read"

    # valid traffic: a formulary, couriers and stock, then prescriptions between the fuzz
    suffix = f"{int(time.time() * 1000) % 10**8:08d}"
    drugs = (f"DRUG-FZA-{suffix}", f"DRUG-FZB-{suffix}")
    warehouse = f"WH-FZ-{suffix}"
    await system.seed(
        formulary=[FormularyEntry(drug_code=d, name=d, max_quantity=100, max_days_supply=90) for d in drugs],
        couriers=[CourierProfile(courier_id=f"C-FZ{i}-{suffix}", name=f"Courier {i}") for i in range(3)],
        stock=[(warehouse, d, 500) for d in drugs],
    )
    valid = [
        prescription_message(f"RX-FZ-{suffix}-{i:02d}", [(drugs[0], 2)] + ([(drugs[1], 1)] if i % 2 else []))
        for i in range(VALID_PRESCRIPTIONS)
    ]
    valid_ids = {m.prescription.prescription_id for m in valid}
    simulator = scripted_couriers(settings, {rx: ["deliver"] for rx in valid_ids})
    simulator.start()

    sent: Counter[str] = Counter()
    publish_started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=5, max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        chunk = -(-len(corpus) // VALID_PRESCRIPTIONS)
        for index, message in enumerate(valid):
            name, key, value, headers = bus.encode(message, settings)
            pending = [await producer.send(name, value, key=key, headers=headers)]
            for fuzz in corpus[index * chunk : (index + 1) * chunk]:
                pending.append(
                    await producer.send(
                        fuzz.topic, fuzz.value, key=fuzz.key.encode(), headers=fuzz_headers(fuzz, settings)
                    )
                )
                sent[fuzz.topic] += 1
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    publish_s = time.monotonic() - publish_started
    assert sum(sent.values()) == len(corpus)

    # wait for the valid prescriptions and for every dead letter, at the same time
    wanted = {(f.key, group) for f in corpus for group in groups_of[f.topic]}
    terminal: dict[str, Any] = {}
    progress = Progress(timeout=240, stall_s=30)

    async def completions() -> None:
        while len(terminal) < len(valid_ids) and not progress.over:
            for rx in valid_ids - set(terminal):
                status = await system.status(rx)
                if status is not None and status.terminal:
                    terminal[rx] = status
                    progress.moved()
            await asyncio.sleep(0.5)

    try:
        letters, _ = await asyncio.gather(read_dead_letters(settings, wanted, progress), completions())
    finally:
        await simulator.stop()
    drained_s = time.monotonic() - publish_started

    arrived = wanted <= {(letter.key, letter.group) for letter in letters} and len(terminal) == len(valid_ids)
    lags: list[Any] = []
    for _ in range(10 if arrived else 2):  # the consumers carry on to the end of every topic
        lags = [lag for lag in await consumer_lag(settings) if lag.lag > 0]
        if not lags:
            break
        await asyncio.sleep(1)
    by_key_corpus = {f.key: f for f in corpus}
    stuck = await stuck_positions(settings, by_key_corpus) if lags else []
    # payloads the topic's parser refuses with something else than a pydantic ValidationError
    odd = Counter(
        (f.topic, error.split(":")[0])
        for f in corpus
        if not (error := parse_error(f)).startswith(("ValidationError", "too large"))
    )

    # --- figures -------------------------------------------------------------------------------
    by_key: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        by_key[letter.key].append(letter)
    missing, wrong_reason, wrong_bytes = [], [], []
    for fuzz in corpus:
        found = by_key.get(fuzz.key, [])
        for group in sorted(groups_of[fuzz.topic] - {letter.group for letter in found}):
            missing.append((fuzz, group))
        for letter in found:
            if letter.reason not in ALLOWED_REASONS or letter.reason not in fuzz.reasons or letter.topic != fuzz.topic:
                wrong_reason.append((fuzz, letter))
            if letter.value != fuzz.value:
                wrong_bytes.append((fuzz, letter))
    fuzz_keys = set(by_key_corpus)
    valid_dead = [letter for letter in letters if letter.key in valid_ids]
    other_dead = [letter for letter in letters if letter.key not in fuzz_keys and letter.key not in valid_ids]
    reasons = Counter(letter.reason for letter in letters if letter.key in fuzz_keys)
    kinds = Counter(kind for f in corpus for kind in f.kind.split("+"))
    delivered = sorted(rx for rx, s in terminal.items() if s.stage.value == "delivered")
    not_delivered = {rx: (terminal[rx].stage.value if rx in terminal else "not terminal") for rx in valid_ids}
    not_delivered = {rx: stage for rx, stage in not_delivered.items() if stage != "delivered"}
    alive = {name: services.pid_of(f"{name}-1") for name in SERVICES}
    crashed = sorted(name for name in SERVICES if alive[name] is None or alive[name] != pids[name])
    tracebacks = unexpected_tracebacks(services)

    missing_by_kind = Counter((fuzz.topic, group, fuzz.kind) for fuzz, group in missing)
    figures = "\n".join(
        [
            f"malformed messages sent: {len(corpus)} ({dict(sorted(sent.items()))})",
            f"mutation kinds: {dict(sorted(kinds.items()))}",
            f"expected dead letters (message x consumer group): {len(wanted)}",
            f"dead letters of fuzz messages per reason: {dict(sorted(reasons.items()))}",
            f"missing dead letters: {len(missing)}; by (topic, group, kind): {dict(missing_by_kind.most_common(15))}",
            f"wrong reason/topic: {len(wrong_reason)}; bytes changed: {len(wrong_bytes)}",
            f"valid prescriptions delivered: {len(delivered)}/{len(valid_ids)}; not delivered: {not_delivered}",
            f"valid traffic dead-lettered: {len(valid_dead)}; other dead letters: {len(other_dead)}",
            f"consumer lag left: {[(lag.group, lag.topic, lag.lag) for lag in lags]}",
            f"payloads whose parsing raises something else than ValidationError: {dict(odd)}",
            f"consumers stuck: {len(stuck)}" + "".join(f"\n  STUCK {line}" for line in stuck[:20]),
            f"crashes: {len(crashed)} {crashed}; unexpected tracebacks: "
            f"{ {n: len(lines) for n, lines in tracebacks.items()} }",
            f"time: generate {generated_s:.1f}s, publish {publish_s:.1f}s, drain {drained_s:.1f}s, "
            f"test body {time.monotonic() - started:.1f}s",
        ]
    )
    print("\n--- fuzz figures ---\n" + figures)
    for fuzz, group in missing[:5]:
        print(f"MISSING {fuzz.topic} {group} {fuzz.key} kind={fuzz.kind} value={fuzz.value[:300]!r}")
    for fuzz, letter in wrong_reason[:5]:
        print(f"WRONG REASON {fuzz.topic} {fuzz.key} kind={fuzz.kind} got {letter.reason} on {letter.topic}")
    for name, lines in tracebacks.items():
        for line in lines[:3]:
            print(f"TRACEBACK {name}: {line[:1500]}")

    assert not crashed, f"service processes died: {crashed}\n{figures}"
    assert not missing, f"malformed messages not dead-lettered by every consumer group\n{figures}"
    assert not wrong_reason, f"dead letters with the wrong reason or topic\n{figures}"
    assert not wrong_bytes, f"dead letters whose bytes differ from the original\n{figures}"
    assert not not_delivered, f"valid prescriptions not delivered\n{figures}"
    assert not valid_dead, f"valid traffic dead-lettered\n{figures}"
    assert not lags, f"consumers did not reach the end of their topics\n{figures}"
    assert not any(tracebacks.values()), f"tracebacks logged outside dead-letter/retry events\n{figures}"
