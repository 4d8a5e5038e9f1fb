"""Couriers and pharmacists prove who they are: what they send counts only signed with the token
made for the person it names; a missing, wrong or borrowed signature is quarantined with a reason."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pharmacy_contracts import signing
from pharmacy_contracts.courier import CourierReported
from pharmacy_contracts.prescription import ReviewDecided
from services.cli import bus
from services.runtime import credentials
from services.runtime.errors import Refused
from services.runtime.settings import RuntimeSettings

KEY = b"courier-organisation-key"
PHARMACIST_KEY = b"pharmacist-organisation-key"


def report(courier_id: str = "C-AMINA") -> CourierReported:
    return CourierReported(
        correlation_id="RX-1",
        producer="courier-app",
        dispatch_id="RX-1-D1",
        courier_id=courier_id,
        package_id="RX-1",
        status="failed",
        failure_reason="patient_absent",
    )


def decision(pharmacist_id: str = "PH-AIGUL") -> ReviewDecided:
    return ReviewDecided(
        correlation_id="RX-1",
        producer="pharmacist-cli",
        prescription_id="RX-1",
        decision="approve",
        pharmacist_id=pharmacist_id,
        note="checked",
    )


def headers(record: tuple[str, bytes, bytes, list[tuple[str, bytes]]]) -> dict[str, str]:
    return {name: value.decode() for name, value in record[3]}


def check(record: tuple[str, bytes, bytes, list[tuple[str, bytes]]], key: bytes | None = KEY) -> str:
    return credentials.verified_sender(record[2], headers(record), key, credentials.COURIER, "courier_id")


def test_a_report_signed_with_the_organisations_key_or_the_couriers_own_token_is_the_courier_s():
    by_dispatcher = bus.encode(report(), RuntimeSettings(courier_gateway_key=SecretStr(KEY.decode())))
    own = SecretStr(credentials.courier_token(KEY, "C-AMINA"))
    by_the_courier = bus.encode(report(), RuntimeSettings(courier_token=own))
    assert check(by_dispatcher) == check(by_the_courier) == "C-AMINA"
    assert headers(by_the_courier)[signing.KEY_ID_HEADER] == "1", "the token's issue is the key id"


def test_a_courier_s_token_is_rotated_by_issuing_the_next_and_revoked_by_their_floor():
    first, second = (credentials.courier_token(KEY, "C-AMINA", issue) for issue in (1, 2))
    assert first.startswith("1.") and second.startswith("2.") and first[2:] != second[2:]
    signed_first = bus.encode(report(), RuntimeSettings(courier_token=SecretStr(first)))
    signed_second = bus.encode(report(), RuntimeSettings(courier_token=SecretStr(second)))
    assert check(signed_first) == check(signed_second) == "C-AMINA", "both count while the courier switches"
    floors = {"C-AMINA": 2}
    body, revoked = signed_first[2], headers(signed_first)
    with pytest.raises(Refused) as refused:
        credentials.verified_sender(body, revoked, KEY, credentials.COURIER, "courier_id", floors)
    assert refused.value.code == "revoked_key"
    assert (
        credentials.verified_sender(
            signed_second[2], headers(signed_second), KEY, credentials.COURIER, "courier_id", floors
        )
        == "C-AMINA"
    )
    # Another courier's floor is theirs alone.
    assert check(signed_first) == "C-AMINA"
    assert credentials.is_token_of(KEY, credentials.COURIER, "C-AMINA", second, floors)
    assert not credentials.is_token_of(KEY, credentials.COURIER, "C-AMINA", first, floors)
    assert not credentials.is_token_of(KEY, credentials.COURIER, "C-BOLAT", second, {})


@pytest.mark.parametrize("key_id", ["token", "0", "-1", "1e3", "１", "99999999"])
def test_a_key_id_that_is_no_token_issue_is_refused(key_id: str):
    record = bus.encode(report(), RuntimeSettings(courier_gateway_key=SecretStr(KEY.decode())))
    forged = {**headers(record), signing.KEY_ID_HEADER: key_id}
    with pytest.raises(Refused) as refused:
        credentials.verified_sender(record[2], forged, KEY, credentials.COURIER, "courier_id")
    assert refused.value.code == "unknown_key"


def test_the_issue_is_signed_into_the_token_so_relabelling_it_does_not_pass():
    first = credentials.courier_token(KEY, "C-AMINA", 1)
    relabelled = "7." + first.partition(".")[2]
    record = bus.encode(report(), RuntimeSettings(courier_token=SecretStr(relabelled)))
    with pytest.raises(Refused) as refused:
        check(record)
    assert refused.value.code == "bad_signature"


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        (RuntimeSettings(), "unsigned"),
        (RuntimeSettings(courier_gateway_key=SecretStr("another organisation's key")), "bad_signature"),
        # Anyone's token may sign only as its own courier: here C-BOLAT's token on C-AMINA's report.
        (RuntimeSettings(courier_token=SecretStr(credentials.courier_token(KEY, "C-BOLAT"))), "bad_signature"),
    ],
    ids=["unsigned", "wrong key", "someone else's token"],
)
def test_a_report_not_signed_by_the_courier_it_names_is_refused(settings: RuntimeSettings, code: str):
    with pytest.raises(Refused) as refused:
        check(bus.encode(report(), settings))
    assert refused.value.code == code


def test_a_body_that_speaks_for_another_courier_than_its_signer_is_refused():
    signed_as_bolat = bus.encode(report("C-BOLAT"), RuntimeSettings(courier_gateway_key=SecretStr(KEY.decode())))
    forged_body = report("C-AMINA").model_dump_json().encode()
    with pytest.raises(Refused) as refused:
        credentials.verified_sender(forged_body, headers(signed_as_bolat), KEY, credentials.COURIER, "courier_id")
    assert refused.value.code == "bad_signature", "the body changed: the signature no longer holds"
    same_bytes = signed_as_bolat[2].replace(b"C-BOLAT", b"C-AMINA")
    resigned = {
        **headers(signed_as_bolat),
        **credentials.signed_by(same_bytes, "C-BOLAT", credentials.courier_token(KEY, "C-BOLAT")),
    }
    with pytest.raises(Refused) as mismatch:
        credentials.verified_sender(same_bytes, resigned, KEY, credentials.COURIER, "courier_id")
    assert mismatch.value.code == "sender_mismatch"


def test_without_its_key_a_service_counts_nothing():
    with pytest.raises(Refused) as refused:
        check(bus.encode(report(), RuntimeSettings(courier_gateway_key=SecretStr(KEY.decode()))), key=None)
    assert refused.value.code == "unsigned"


def test_a_pharmacists_decision_is_signed_as_the_pharmacist_and_a_courier_token_does_not_pass_for_one():
    settings = RuntimeSettings(pharmacist_key=SecretStr(PHARMACIST_KEY.decode()))
    record = bus.encode(decision(), settings)
    gate = credentials.signature_gate(PHARMACIST_KEY, credentials.PHARMACIST, "pharmacist_id")
    gate(record[2], headers(record))  # passes
    courier_style = credentials.token(PHARMACIST_KEY, credentials.COURIER, "PH-AIGUL")
    forged = bus.encode(decision(), RuntimeSettings(pharmacist_token=SecretStr(courier_style)))
    with pytest.raises(Refused) as refused:
        gate(forged[2], headers(forged))
    assert refused.value.code == "bad_signature"


def test_the_floors_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PHARMACY_COURIER_KEY_FLOOR", '{"C-CHEN": 2}')
    monkeypatch.setenv("PHARMACY_PHARMACIST_KEY_FLOOR", '{"PH-AIGUL": 3}')
    settings = RuntimeSettings()
    assert (settings.courier_key_floor, settings.pharmacist_key_floor) == ({"C-CHEN": 2}, {"PH-AIGUL": 3})
