"""Only doctors' systems write prescriptions: the signature check itself (`pharmacy_contracts.signing`),
case by case. HMAC-SHA256 over the exact bytes; unsigned, unknown-key, wrong-key and tampered
messages are refused with their reason code.

The same on the real broker, through the consultation service: tests/integration/test_signatures.py.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pharmacy_contracts import signing

BODY = b'{"type": "consultation.prescription_submitted", "sender_id": "clinic-a"}'
SECRET = b"s3cret-of-clinic-a"
KEYS = {"clinic-a": {"k1": SECRET, "k2": b"rotated-in"}, "clinic-b": {"k1": b"clinic-b's own"}}


def headers(
    body: bytes = BODY, *, sender: str = "clinic-a", key_id: str = "k1", secret: bytes = SECRET
) -> dict[str, str]:
    return signing.signature_headers(body, sender_id=sender, key_id=key_id, secret=secret)


def test_the_signature_is_hmac_sha256_of_the_exact_bytes_in_hex() -> None:
    assert signing.sign(BODY, SECRET) == hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert (
        signing.sign(b"The quick brown fox jumps over the lazy dog", b"key")
        == "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
    assert len(signing.sign(BODY, SECRET)) == 64


def test_the_headers_name_the_sender_the_key_and_the_signature() -> None:
    assert headers() == {
        "x-sender-id": "clinic-a",
        "x-key-id": "k1",
        "x-signature": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(),
    }
    assert (signing.SENDER_HEADER, signing.KEY_ID_HEADER, signing.SIGNATURE_HEADER) == (
        "x-sender-id",
        "x-key-id",
        "x-signature",
    )


@pytest.mark.parametrize(
    ("sender", "key_id", "secret"), [("clinic-a", "k1", SECRET), ("clinic-a", "k2", b"rotated-in")]
)
def test_a_message_signed_with_a_registered_key_is_accepted(sender: str, key_id: str, secret: bytes) -> None:
    assert signing.verify(BODY, headers(sender=sender, key_id=key_id, secret=secret), KEYS) == sender


def test_the_verified_sender_is_the_one_the_key_belongs_to() -> None:
    assert signing.verify(BODY, headers(sender="clinic-b", secret=b"clinic-b's own"), KEYS) == "clinic-b"


@pytest.mark.parametrize("missing", ["x-sender-id", "x-key-id", "x-signature"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_message_without_any_one_header_is_unsigned(missing: str, how: str) -> None:
    given = headers()
    if how == "absent":
        del given[missing]
    else:
        given[missing] = ""
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY, given, KEYS)
    assert refused.value.code == "unsigned"
    assert str(refused.value) == "the message carries no sender, key id or signature header"


def test_no_headers_at_all_is_unsigned() -> None:
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY, {}, KEYS)
    assert refused.value.code == "unsigned"


@pytest.mark.parametrize(("sender", "key_id"), [("clinic-z", "k1"), ("clinic-a", "k9"), ("clinic-b", "k2")])
def test_an_unknown_sender_or_key_is_refused(sender: str, key_id: str) -> None:
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY, headers(sender=sender, key_id=key_id), KEYS)
    assert refused.value.code == "unknown_key"
    assert str(refused.value) == f"sender {sender!r} has no registered key {key_id!r}"


def test_tampered_bytes_are_refused() -> None:
    signed = headers()
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY.replace(b"clinic-a", b"clinic-b"), signed, KEYS)
    assert refused.value.code == "bad_signature"
    assert str(refused.value) == "the signature does not match the message bytes"


@pytest.mark.parametrize(
    ("sender", "key_id", "secret"),
    [
        ("clinic-a", "k1", b"rotated-in"),  # another of the sender's keys under the wrong id
        ("clinic-b", "k1", SECRET),  # clinic-a's key, claiming to be clinic-b
        ("clinic-a", "k1", b""),
    ],
)
def test_a_signature_made_with_another_key_is_refused(sender: str, key_id: str, secret: bytes) -> None:
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY, headers(sender=sender, key_id=key_id, secret=secret), KEYS)
    assert refused.value.code == "bad_signature"


def test_a_forged_signature_string_is_refused() -> None:
    given = headers()
    given["x-signature"] = given["x-signature"].upper()
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(BODY, given, KEYS)
    assert refused.value.code == "bad_signature"


def test_a_refusal_is_a_value_error_carrying_its_code() -> None:
    refusal = signing.SignatureRefused("unknown_key", "no such key")
    assert isinstance(refusal, ValueError)
    assert (refusal.code, str(refusal), refusal.args) == ("unknown_key", "no such key", ("no such key",))
