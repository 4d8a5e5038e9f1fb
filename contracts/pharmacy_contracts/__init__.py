"""Pharmacy fulfillment message contracts: the only code the services share."""

from . import consultation, courier, inventory, patient, prescription, topics
from .envelope import Envelope, new_message_id, utc_now

__all__ = [
    "Envelope",
    "consultation",
    "courier",
    "inventory",
    "new_message_id",
    "patient",
    "prescription",
    "topics",
    "utc_now",
]
