"""Signed prescriptions: HMAC-SHA256 over the exact message bytes, one key per upstream system.

The sender puts three headers on the Kafka record: who it is, which of its keys it used (a system
may hold several, so keys can rotate without downtime), and the signature of the value bytes. The
consultation service verifies before it even parses the message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SENDER_HEADER = "x-sender-id"
KEY_ID_HEADER = "x-key-id"
SIGNATURE_HEADER = "x-signature"


class SignatureRefused(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def sign(body: bytes, secret: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, *, sender_id: str, key_id: str, secret: bytes) -> dict[str, str]:
    return {SENDER_HEADER: sender_id, KEY_ID_HEADER: key_id, SIGNATURE_HEADER: sign(body, secret)}


def verify(body: bytes, headers: Mapping[str, str], keys: Mapping[str, Mapping[str, bytes]]) -> str:
    """Return the verified sender id, or raise SignatureRefused with a reason code.

    `keys` maps sender id → key id → secret.
    """
    sender, key_id, signature = (headers.get(h) for h in (SENDER_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER))
    if not (sender and key_id and signature):
        raise SignatureRefused("unsigned", "the message carries no sender, key id or signature header")
    secret = keys.get(sender, {}).get(key_id)
    if secret is None:
        raise SignatureRefused("unknown_key", f"sender {sender!r} has no registered key {key_id!r}")
    if not hmac.compare_digest(sign(body, secret), signature):
        raise SignatureRefused("bad_signature", "the signature does not match the message bytes")
    return sender
