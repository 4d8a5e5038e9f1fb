"""Every reason a message is refused with: the code its dead letter carries (`dlq.reason`), the
receipt a sender gets (`consultation.receipts.v1`), and what a person does about it. One place,
so the README's table is generated from it (`make contracts`) and a test holds it to the code:
every code the services refuse with is here, and nothing here is unused.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Reason(NamedTuple):
    where: str
    meaning: str


REASONS: dict[str, Reason] = {
    # --- the runtime, on every topic
    "too_large": Reason("any consumer", "the record is larger than PHARMACY_MAX_MESSAGE_BYTES; unread"),
    "unreadable": Reason("any consumer", "a gate could not read the record's bytes or headers at all"),
    "contract_violation": Reason(
        "any consumer",
        "not JSON, or not the topic's contract: a field missing, unknown, mistyped or out of range",
    ),
    "processing_failed": Reason(
        "any consumer", "kept failing after every retry (a fault of ours, not the message's): replay it once fixed"
    ),
    "unexpected_message": Reason("any consumer", "a message of a type the topic carries but this use case never takes"),
    # --- signatures: upstream systems, couriers, pharmacists
    "unsigned": Reason("consultation, courier, prescription", "no sender, key id or signature header"),
    "unknown_key": Reason(
        "consultation, courier, prescription",
        "the sender has no registered key of that id (PHARMACY_SENDER_KEYS), or a person's key id is no token issue",
    ),
    "revoked_key": Reason(
        "courier, prescription",
        "signed with a person's token of an issue their floor revoked (PHARMACY_COURIER_KEY_FLOOR, "
        "PHARMACY_PHARMACIST_KEY_FLOOR)",
    ),
    "bad_signature": Reason(
        "consultation, courier, prescription", "the signature does not match the bytes under the sender's key or token"
    ),
    "sender_mismatch": Reason(
        "consultation, courier, prescription", "signed by one sender, courier or pharmacist, and speaking for another"
    ),
    # --- consultation: upstream systems' prescriptions and cancellations
    "fhir_unmappable": Reason("consultation", "a FHIR bundle not mapped faithfully; the detail says where and why"),
    "message_id_replayed": Reason("consultation", "a message id the sender used before, now with other content"),
    "prescription_id_reused": Reason("consultation", "a prescription id already received in another message"),
    "unknown_prescription": Reason("consultation", "a cancellation of a prescription never received"),
    "not_your_prescription": Reason("consultation", "a cancellation of another system's prescription"),
    # --- prescription: pharmacists
    "not_under_review": Reason("prescription", "a pharmacist's decision on a prescription that is not held"),
    # --- inventory: warehouse staff
    "unknown_warehouse": Reason("inventory", "stock for a warehouse not registered: register it, then replay"),
    # --- courier: couriers' reports and dispatchers
    "unknown_package": Reason("courier", "a report on a package the courier service does not know"),
    "unknown_dispatch": Reason("courier", "a report on a dispatch this package never had"),
    "not_your_dispatch": Reason("courier", "a report on a dispatch assigned to another courier"),
    "offer_expired": Reason("courier", "a report on an offer not accepted in time, since given to another courier"),
    "dispatch_closed": Reason("courier", "a report on a dispatch no longer active (delivered, withdrawn, given up)"),
    "out_of_order": Reason("courier", "a report not following the dispatch's last step (picked up before accepted)"),
    "code_locked": Reason(
        "courier", "'delivered' on an attempt that took too many wrong codes: the dispatcher decides"
    ),
    "dispatch_withdrawn": Reason(
        "courier", "a report other than 'returned' on a dispatch the prescription's cancellation recalled"
    ),
    "not_known": Reason("courier", "a dispatcher placed a delivery the courier service has not seen approved yet"),
    "delivery_finished": Reason("courier", "a dispatcher placed a delivery already delivered, given up or cancelled"),
}


#: Reasons that leave a message's sender unknown (the signature gates', and a size checked before
#: them): such a message gets no answer, since anyone may have sent it.
SENDER_UNKNOWN = frozenset(
    {"unsigned", "unknown_key", "revoked_key", "bad_signature", "sender_mismatch", "unreadable", "too_large"}
)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+\-]{0,127}$")


def identifier_or_none(text: str | None) -> str | None:
    """`text` if it can stand in a contract's id field (a header or key from outside), else None."""
    return text if text is not None and _IDENTIFIER.match(text) else None


def reasons_markdown() -> str:
    rows = [f"| `{code}` | {reason.where} | {reason.meaning} |" for code, reason in REASONS.items()]
    return "\n".join(["| reason | refused by | meaning |", "|---|---|---|", *rows])
