"""People's credentials: a courier's or a pharmacist's token, an HMAC of their id under their
organisation's key (`PHARMACY_COURIER_GATEWAY_KEY`, `PHARMACY_PHARMACIST_KEY`). A token opens a
courier's own trips at the gateway, and signs what its holder sends: a courier's reports, a
pharmacist's decisions, as upstream systems sign prescriptions (`pharmacy_contracts.signing`: an
HMAC-SHA256 of the record's bytes, with the sender and key id in headers). The service that reads
them derives the token from the key and the sender the headers name, so it keeps no list of
tokens, any instance can check one, and the person a message speaks for is the one who signed it,
never only a field of its body. Changing a key revokes every token made from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping

from pydantic import SecretStr

from pharmacy_contracts import signing

from .errors import Refused

#: What each kind of token signs besides the person's id, so one cannot stand for the other.
COURIER = "pharmacy courier gateway v1"
PHARMACIST = "pharmacy pharmacist v1"
#: The key id a token's signature names (the token is the person's only key).
TOKEN_KEY_ID = "token"


def token(key: bytes, purpose: str, person_id: str) -> str:
    digest = hmac.new(key, f"{purpose}\n{person_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def courier_token(key: bytes, courier_id: str) -> str:
    return token(key, COURIER, courier_id)


def pharmacist_token(key: bytes, pharmacist_id: str) -> str:
    return token(key, PHARMACIST, pharmacist_id)


def signed_by(body: bytes, person_id: str, person_token: str) -> dict[str, str]:
    """The headers that sign `body` as `person_id`, with their token."""
    return signing.signature_headers(body, sender_id=person_id, key_id=TOKEN_KEY_ID, secret=person_token.encode())


def verified_sender(body: bytes, headers: Mapping[str, str], key: bytes | None, purpose: str, field: str) -> str:
    """The person who signed `body`, checked against the token `key` makes for them, and against
    the id the body's `field` names; Refused (the record is quarantined) otherwise."""
    if key is None:
        raise Refused("unsigned", "this service holds no key to check people's signatures with: nothing counts")
    sender = headers.get(signing.SENDER_HEADER)
    keys = {sender: {TOKEN_KEY_ID: token(key, purpose, sender).encode()}} if sender else {}
    try:
        verified = signing.verify(body, headers, keys)
    except signing.SignatureRefused as refused:
        raise Refused(refused.code, str(refused)) from None
    claimed = _field_in(body, field)
    if claimed is not None and claimed != verified:
        raise Refused("sender_mismatch", f"signed by {verified!r} but speaks for {field} {claimed!r}")
    return verified


def signature_gate(key: bytes | None, purpose: str, field: str) -> Callable[[bytes, dict[str, str]], None]:
    """A consumer's gate (`kafka.subscribe`): a record its signer does not vouch for is quarantined."""

    def gate(body: bytes, headers: dict[str, str]) -> None:
        verified_sender(body, headers, key, purpose, field)

    return gate


def secret_of(value: SecretStr | None) -> bytes | None:
    """A key setting as bytes, or None when it is unset or blank."""
    text = value.get_secret_value().strip() if value is not None else ""
    return text.encode() if text else None


def _field_in(body: bytes, field: str) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
