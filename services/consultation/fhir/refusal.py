"""How the FHIR mapping says no: Refused(`fhir_unmappable`) with a sentence saying where and why,
and a short account of a pydantic validation error to put in that sentence.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

from services.runtime.errors import Refused

from .systems import REASON_SYSTEM

UNMAPPABLE = "fhir_unmappable"


def refuse(detail: str) -> Refused:
    return Refused(UNMAPPABLE, detail)


def brief(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in error.errors()[:5])


#: The OperationOutcome issue type of a refusal (FHIR R4 issue-type codes); anything else breaks a rule.
_ISSUE_TYPES = {
    "contract_violation": "invalid",
    "malformed_json": "invalid",
    UNMAPPABLE: "invalid",
    "prescription_id_reused": "duplicate",
    "message_id_replayed": "duplicate",
    "unknown_prescription": "not-found",
    "not_your_prescription": "forbidden",
}


def operation_outcome(code: str, detail: str) -> dict[str, Any]:
    """A refusal as a FHIR R4 OperationOutcome: the reason code (README: Reason codes) in
    `details`, its sentence in `diagnostics`. Built and checked with fhir.resources."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": _ISSUE_TYPES.get(code, "business-rule"),
                "details": {"coding": [{"system": REASON_SYSTEM, "code": code}], "text": code},
                "diagnostics": detail[:2000] or code,
            }
        ],
    }
    return json.loads(OperationOutcome.model_validate(outcome).model_dump_json())
