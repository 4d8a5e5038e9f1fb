"""How the FHIR mapping says no: Refused(`fhir_unmappable`) with a sentence saying where and why,
and a short account of a pydantic validation error to put in that sentence.
"""

from __future__ import annotations

from pydantic import ValidationError

from services.runtime.errors import Refused

UNMAPPABLE = "fhir_unmappable"


def refuse(detail: str) -> Refused:
    return Refused(UNMAPPABLE, detail)


def brief(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in error.errors()[:5])
