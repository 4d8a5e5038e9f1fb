"""What a message may hold: numbers storage can keep, dates that make sense, text a person can read.

A value past these limits is refused at the door (`contract_violation`, with the field and why),
not accepted and then failed in storage (MongoDB keeps 64-bit integers; 2**63 raised OverflowError
there, was retried and dead-lettered as `processing_failed`) or shown to a pharmacist as something
it is not. Every limit is far beyond what a pharmacy or a warehouse would ever mean, and far below
what sums of them can overflow: a prescription's or a warehouse's totals always fit.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# --- numbers ---------------------------------------------------------------------------------------

#: Units (tablets, vials, ...) on one prescription line, one restock or one count correction. A
#: million tablets is a lorry-load: no prescription, and no delivery to a county warehouse.
MAX_UNITS = 1_000_000
#: Units of one drug a warehouse holds, and anything summed from lines or lots (a prescription's
#: demand for a drug over its lines, a shortage, a level). Inventory refuses the restock that would
#: pass it, so every figure it reports fits.
MAX_STOCK_UNITS = 1_000_000_000
#: Days of supply of one line: ten years. Inventory adds them to today's date to find lots that
#: last the therapy, and the prescription service to the day a supply started.
MAX_DAYS_SUPPLY = 3650
#: Lines on one prescription (and so on its approval); `Reason.item_index` points into them.
MAX_ITEMS = 20
#: Delivery attempts, wrong codes on one attempt: the policies stop after a handful.
MAX_ATTEMPTS = 1000
#: Versions of one message type's schema.
MAX_SCHEMA_VERSION = 1000

Units = Annotated[int, Field(gt=0, le=MAX_UNITS)]
"""A positive count of units in one line or one command."""
StockUnits = Annotated[int, Field(ge=0, le=MAX_STOCK_UNITS)]
"""Units held, moved or missing: never negative, at most what a warehouse may hold of one drug."""
Attempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)]

# --- dates -----------------------------------------------------------------------------------------

#: The longest a prescription may be dispensed on: a year (a chronic repeat prescription's limit in
#: most countries), counted generously: a leap year, and the whole last day (FHIR's `end` date).
MAX_VALIDITY = timedelta(days=367)
#: The furthest a lot's expiry may be from the day it is received: no medicine keeps ten years
#: (shelf lives are five at most), so a later date is a typing error such as 9999-12-31.
MAX_SHELF_LIFE = timedelta(days=3653)

# --- text a person reads ---------------------------------------------------------------------------

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) make text display
# in another order than it is stored ("Trojan Source"): a name that reads as one patient and is
# another. Marks (U+200E, U+200F, U+061C) stay: Uyghur and other right-to-left names need them.
_BIDI_CONTROLS = r"\u202a-\u202e\u2066-\u2069"
# C0 and C1 controls (NUL included) and DEL: invisible, and NUL ends strings in C code downstream.
_CONTROLS = r"\u0000-\u001f\u007f-\u009f"
_CONTROLS_BUT_TABS_AND_LINE_BREAKS = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
# A line or paragraph separator breaks a line like a newline does.
_LINE_SEPARATORS = r"\u2028\u2029"
# A surrogate on its own is no character: UTF-8 (JSON's, BSON's) cannot encode it.
_LONE_SURROGATES = r"\ud800-\udfff"


class Printable:
    """Refuses the characters a person cannot see, or that change how the rest displays.

    `multiline` text (notes, reasons, dosage instructions, an address) may carry tabs and line
    breaks; names, towns and other one-line values may not. The refused characters are also
    published as a JSON Schema `pattern`, so senders in other languages can check before sending.
    Put it after the length in `Annotated`: an over-long value is then refused as too long, unscanned.
    """

    def __init__(self, *, multiline: bool) -> None:
        self.multiline = multiline
        self.forbidden = (
            _CONTROLS_BUT_TABS_AND_LINE_BREAKS + _BIDI_CONTROLS
            if multiline
            else _CONTROLS + _LINE_SEPARATORS + _BIDI_CONTROLS
        )
        self._search = re.compile(f"[{self.forbidden}{_LONE_SURROGATES}]")

    def __repr__(self) -> str:
        return f"Printable(multiline={self.multiline})"

    def check(self, value: str) -> str:
        found = self._search.search(value)
        if found is not None:
            raise PydanticCustomError(
                "unprintable_character",
                "contains U+{code} at position {position}: {what}",
                {
                    "code": f"{ord(found.group()):04X}",
                    "position": found.start(),
                    "what": "only visible text, tabs and line breaks are accepted"
                    if self.multiline
                    else "only visible text on one line is accepted",
                },
            )
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = f"^[^{self.forbidden}]*$"
        return json_schema


ONE_LINE = Printable(multiline=False)
"""A name, a town, a code: visible characters on one line."""
MULTILINE = Printable(multiline=True)
"""A note, a reason, an instruction, an address: visible characters, tabs and line breaks."""

Name = Annotated[str, Field(min_length=1, max_length=200), ONE_LINE]
"""A person's name as people write it."""
