"""The upstream client in pharmacy_contracts: what it builds, signs and sends, without a broker."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pydantic import SecretStr, ValidationError

from pharmacy_contracts import client
from pharmacy_contracts.consultation import (
    EXAMPLE_PRESCRIPTION,
    CancellationRequested,
    Prescription,
    PrescriptionSubmitted,
)
from pharmacy_contracts.envelope import utc_now
from pharmacy_contracts.inventory import RestockRequested
from pharmacy_contracts.topics import CONSULTATION_PRESCRIPTIONS, INVENTORY_COMMANDS
from services.cli import bus
from services.consultation.service import ConsultationService
from services.runtime.errors import Refused
from services.runtime.settings import RuntimeSettings

KEY = client.SigningKey(sender_id="district-clinic", key_id="2026-01", secret=b"a shared secret")
RX = EXAMPLE_PRESCRIPTION["prescription_id"]


def gate(keys: dict[str, dict[str, bytes]] | None = None) -> ConsultationService:
    """The consultation service as far as its signature gate goes (it needs no storage)."""
    registered = keys if keys is not None else {KEY.sender_id: {KEY.key_id: KEY.secret}}
    return ConsultationService(
        cast(Any, None), cast(Any, None), clock=utc_now, sender_keys=registered, delivery_code_key=b"k"
    )


def headers(record: client.Record) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def test_a_prescription_dict_becomes_a_submission_correlated_by_its_id() -> None:
    message = client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id="district-clinic")

    assert isinstance(message, PrescriptionSubmitted)
    assert message.correlation_id == message.prescription.prescription_id == RX
    assert message.producer == message.sender_id == "district-clinic"


def test_a_prescription_model_is_taken_as_it_is_and_envelope_fields_can_be_fixed() -> None:
    prescription = Prescription.model_validate(EXAMPLE_PRESCRIPTION)
    at = datetime(2026, 11, 25, 8, 0, 5, tzinfo=UTC)

    message = client.prescription_submitted(
        prescription, sender_id="district-clinic", producer="emr-7", message_id="MSG-1", occurred_at=at
    )

    assert message.prescription is prescription
    assert (message.message_id, message.producer, message.occurred_at) == ("MSG-1", "emr-7", at)


def test_an_invalid_prescription_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValidationError):
        client.prescription_submitted({**EXAMPLE_PRESCRIPTION, "items": []}, sender_id="district-clinic")


def test_the_record_carries_topic_key_json_and_the_services_headers_then_the_signature() -> None:
    message = client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id=KEY.sender_id)

    record = client.encode(message, KEY)

    assert record.topic == CONSULTATION_PRESCRIPTIONS.name
    assert record.key == RX.encode()
    assert CONSULTATION_PRESCRIPTIONS.parse(record.value) == message
    assert [name for name, _ in record.headers] == [
        "content-type",
        "message-type",
        "message-id",
        "correlation-id",
        "x-sender-id",
        "x-key-id",
        "x-signature",
    ]
    assert headers(record) | {"x-signature": "?"} == {
        "content-type": "application/json",
        "message-type": "consultation.prescription_submitted",
        "message-id": message.message_id,
        "correlation-id": RX,
        "x-sender-id": "district-clinic",
        "x-key-id": "2026-01",
        "x-signature": "?",
    }


def test_consultation_accepts_what_the_client_signs() -> None:
    submitted = client.encode(client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id=KEY.sender_id), KEY)
    cancelled = client.encode(
        client.cancellation_requested(RX, sender_id=KEY.sender_id, reason="therapy changed", requested_by="Dr. K"),
        KEY,
    )

    for record in (submitted, cancelled):
        gate().check_signature(record.value, headers(record))  # no Refused


@pytest.mark.parametrize(
    ("registered", "code"),
    [
        ({"district-clinic": {"2026-01": b"another secret"}}, "bad_signature"),
        ({"district-clinic": {"2025-12": b"a shared secret"}}, "unknown_key"),
        ({}, "unknown_key"),
    ],
)
def test_consultation_refuses_a_signature_from_a_key_it_does_not_hold(registered: Any, code: str) -> None:
    record = client.encode(client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id=KEY.sender_id), KEY)

    with pytest.raises(Refused) as refused:
        gate(registered).check_signature(record.value, headers(record))

    assert refused.value.code == code


def test_unsigned_records_are_refused_by_consultation() -> None:
    record = client.encode(client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id=KEY.sender_id))

    assert "x-signature" not in headers(record)
    with pytest.raises(Refused) as refused:
        gate().check_signature(record.value, headers(record))
    assert refused.value.code == "unsigned"


def test_a_key_cannot_sign_for_another_sender() -> None:
    message = client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id="other-clinic")

    with pytest.raises(ValueError, match="other-clinic"):
        client.encode(message, KEY)


def test_a_cancellation_is_keyed_and_correlated_by_the_prescription() -> None:
    message = client.cancellation_requested(RX, sender_id="district-clinic", reason="duplicate", requested_by="Dr. K")

    record = client.encode(message, KEY)

    assert isinstance(message, CancellationRequested)
    assert (record.topic, record.key, headers(record)["correlation-id"]) == (
        CONSULTATION_PRESCRIPTIONS.name,
        RX.encode(),
        RX,
    )


def test_the_cli_encodes_through_the_client() -> None:
    """One copy of the wire format: the tools' encoder is the client's."""
    message = client.prescription_submitted(EXAMPLE_PRESCRIPTION, sender_id=KEY.sender_id)
    settings = RuntimeSettings(signing_key_id=KEY.key_id, signing_secret=SecretStr(KEY.secret.decode()))
    command = RestockRequested.model_validate(RestockRequested.model_json_schema()["examples"][0])

    assert bus.encode(message, settings) == tuple(vars(client.encode(message, KEY)).values())
    assert bus.encode(command) == tuple(vars(client.encode(command)).values())
    assert bus.encode(command)[0] == INVENTORY_COMMANDS.name


def test_the_signing_key_keeps_its_secret_out_of_reprs() -> None:
    assert "shared" not in repr(KEY)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append((topic, key, value, headers))


async def test_the_publisher_sends_signed_submissions_and_cancellations() -> None:
    pharmacy = client.PharmacyClient("kafka:9092", KEY)
    fake = FakeProducer()
    pharmacy._producer = fake  # type: ignore[assignment]

    submitted = await pharmacy.submit(EXAMPLE_PRESCRIPTION)
    cancelled = await pharmacy.cancel(RX, reason="therapy changed", requested_by="Dr. Ilyas Karimov")
    await pharmacy.send(submitted)  # a resend after a failure: the same message, the same id

    assert [sent[:3] for sent in fake.sent] == [
        tuple(vars(client.encode(m, KEY)).values())[:3] for m in (submitted, cancelled, submitted)
    ]
    for topic, _, value, record_headers in fake.sent:
        assert topic == CONSULTATION_PRESCRIPTIONS.name
        gate().check_signature(value, {k: v.decode() for k, v in record_headers})


def test_publishing_without_aiokafka_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiokafka", None)

    with pytest.raises(ImportError, match=r"pharmacy-contracts\[publish\]"):
        client.PharmacyClient("kafka:9092", KEY)


def test_building_and_signing_do_not_import_aiokafka() -> None:
    script = "import sys, pharmacy_contracts.client; assert 'aiokafka' not in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True)
