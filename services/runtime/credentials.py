"""People's credentials: a courier's or a pharmacist's token, an HMAC of their id and the token's
issue number under their organisation's key (`PHARMACY_COURIER_GATEWAY_KEY`,
`PHARMACY_PHARMACIST_KEY`). A token opens a courier's own trips at the gateway, and signs what its
holder sends: a courier's reports, a pharmacist's decisions, as upstream systems sign
prescriptions (`pharmacy_contracts.signing`: an HMAC-SHA256 of the record's bytes, with the sender
and key id in headers). The key id is the token's issue: `3.<mac>` is a person's third token.

The service that reads them derives the token from the key, the sender and the issue the headers
name, so it keeps no list of tokens, any instance can check one, and the person a message speaks
for is the one who signed it, never only a field of its body. One person's token is rotated by
issuing the next (`pharmacy couriers token C-ID --issue 2`) and revoked by raising their floor
(`PHARMACY_COURIER_KEY_FLOOR='{"C-ID": 2}'`: issues below 2 no longer count); changing the
organisation's key revokes every token made from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from types import MappingProxyType

from pydantic import SecretStr

from pharmacy_contracts import signing

from .errors import Refused

#: What each kind of token signs besides the person's id, so one cannot stand for the other.
COURIER = "pharmacy courier gateway v1"
PHARMACIST = "pharmacy pharmacist v1"
#: Issue numbers a token may carry (its key id): from 1, a person's first token.
MAX_ISSUE = 1_000_000
#: Each person's lowest issue that still counts (absent: every issue counts).
Floors = Mapping[str, int]
#: No floor: every issue of everyone's token counts.
NO_FLOORS: Floors = MappingProxyType({})


def token(key: bytes, purpose: str, person_id: str, issue: int = 1) -> str:
    """The person's token of that issue: `<issue>.<mac>`."""
    if not 1 <= issue <= MAX_ISSUE:
        raise ValueError(f"a token's issue is 1 to {MAX_ISSUE}")
    digest = hmac.new(key, f"{purpose}\n{person_id}\n{issue}".encode(), hashlib.sha256).digest()
    return f"{issue}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def courier_token(key: bytes, courier_id: str, issue: int = 1) -> str:
    return token(key, COURIER, courier_id, issue)


def pharmacist_token(key: bytes, pharmacist_id: str, issue: int = 1) -> str:
    return token(key, PHARMACIST, pharmacist_id, issue)


def issue_of(key_id: str | None) -> int | None:
    """The issue a key id (or a token's prefix) names, or None if it names none."""
    if key_id is None or not key_id.isascii() or not key_id.isdigit() or len(key_id) > 7:
        return None
    issue = int(key_id)
    return issue if 1 <= issue <= MAX_ISSUE else None


def is_token_of(key: bytes, purpose: str, person_id: str, presented: str, floors: Floors) -> bool:
    """`presented` is a token of this person that still counts (the gateway's bearer check)."""
    issue = issue_of(presented.strip().partition(".")[0])
    if issue is None or issue < floors.get(person_id, 1):
        return False
    return hmac.compare_digest(presented.strip().encode(), token(key, purpose, person_id, issue).encode())


def signed_by(body: bytes, person_id: str, person_token: str) -> dict[str, str]:
    """The headers that sign `body` as `person_id`, with their token (its issue is the key id)."""
    issue = person_token.partition(".")[0]
    return signing.signature_headers(body, sender_id=person_id, key_id=issue, secret=person_token.encode())


def verified_sender(
    body: bytes, headers: Mapping[str, str], key: bytes | None, purpose: str, field: str, floors: Floors = NO_FLOORS
) -> str:
    """The person who signed `body`, checked against the token `key` makes for them of the issue
    the key id names (one the person's floor has not revoked), and against the id the body's
    `field` names; Refused (the record is quarantined) otherwise."""
    if key is None:
        raise Refused("unsigned", "this service holds no key to check people's signatures with: nothing counts")
    sender = headers.get(signing.SENDER_HEADER)
    key_id = headers.get(signing.KEY_ID_HEADER)
    issue = issue_of(key_id)
    if sender and key_id and issue is None:
        raise Refused("unknown_key", f"key id {key_id[:40]!r} is not a token's issue number")
    if sender and issue is not None and issue < floors.get(sender, 1):
        raise Refused("revoked_key", f"{sender}'s token {issue} was revoked (tokens from {floors[sender]} count)")
    keys = {sender: {key_id: token(key, purpose, sender, issue).encode()}} if sender and key_id and issue else {}
    try:
        verified = signing.verify(body, headers, keys)
    except signing.SignatureRefused as refused:
        raise Refused(refused.code, str(refused)) from None
    claimed = _field_in(body, field)
    if claimed is not None and claimed != verified:
        raise Refused("sender_mismatch", f"signed by {verified!r} but speaks for {field} {claimed!r}")
    return verified


def signature_gate(
    key: bytes | None, purpose: str, field: str, floors: Floors = NO_FLOORS
) -> Callable[[bytes, dict[str, str]], None]:
    """A consumer's gate (`kafka.subscribe`): a record its signer does not vouch for is quarantined."""

    def gate(body: bytes, headers: dict[str, str]) -> None:
        verified_sender(body, headers, key, purpose, field, floors)

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
