"""Proof of delivery: a six-digit code only the patient is told.

The code is an HMAC of the prescription id under a key that consultation (which tells the patient)
and courier (which checks what the courier reports) both hold, so no code travels on any topic and
a courier cannot work one out from what a dispatch carries.
"""

from __future__ import annotations

import hashlib
import hmac

CODE_DIGITS = 6


def delivery_code(key: bytes, prescription_id: str) -> str:
    digest = hmac.new(key, f"delivery-code:{prescription_id}".encode(), hashlib.sha256).digest()
    return str(int.from_bytes(digest[:8], "big") % 10**CODE_DIGITS).zfill(CODE_DIGITS)


def is_right_code(key: bytes, prescription_id: str, reported: str | None) -> bool:
    if reported is None:
        return False
    return hmac.compare_digest(delivery_code(key, prescription_id), reported)
