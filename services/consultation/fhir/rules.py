"""What a hospital's bundles may leave out, and what the mapping takes instead: which registration
bodies' identifiers are prescriber licences, and how long a prescription is valid when the bundle
gives no end. Settings (`ConsultationSettings.fhir_rules`), so a deployment names its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .systems import LICENCE_SYSTEM

#: Identifier systems of registration bodies whose numbers are prescriber licences, and the short
#: name a pharmacist knows each by. National e-prescription services name their prescribers so.
LICENCE_REGISTRIES: Mapping[str, str] = MappingProxyType(
    {
        LICENCE_SYSTEM: "licence",
        # England (NHS EPS, UK Core): doctors, nurses, pharmacists, allied professions, dentists.
        "https://fhir.hl7.org.uk/Id/gmc-number": "GMC",
        "https://fhir.hl7.org.uk/Id/nmc-number": "NMC",
        "https://fhir.hl7.org.uk/Id/gphc-number": "GPhC",
        "https://fhir.hl7.org.uk/Id/hcpc-number": "HCPC",
        "https://fhir.hl7.org.uk/Id/gdc-number": "GDC",
        "https://fhir.hl7.org.uk/Id/din-number": "DIN",
        # The NHS's own codes for prescribers no register above lists (EPS prescribing professional code).
        "https://fhir.hl7.org.uk/Id/professional-code": "professional code",
        "https://fhir.hl7.org.uk/Id/nhsbsa-spurious-code": "NHSBSA code",
        # Switzerland (CH EMED, CH Core): GLN and the ZSR number of santésuisse.
        "urn:oid:2.51.1.3": "GLN",
        "urn:oid:2.16.756.5.30.1.123.100.2.1.1": "ZSR",
        # Germany (KBV eRezept): the lifelong doctor number.
        "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR": "LANR",
        # Australia (AHPRA) and the United States (NPI).
        "http://hl7.org.au/id/ahpra-registration-number": "AHPRA",
        "http://hl7.org/fhir/sid/us-npi": "NPI",
    }
)

#: Days a prescription stays valid from its issue date when the bundle gives no validity end: 28
#: for controlled drugs (schedules 2-4 in England), about six months for other medicines.
VALIDITY_DAYS: Mapping[str, int] = MappingProxyType({"controlled": 28, "other": 180})


@dataclass(frozen=True)
class MappingRules:
    licence_registries: Mapping[str, str] = field(default_factory=lambda: LICENCE_REGISTRIES)
    validity_days: Mapping[str, int] = field(default_factory=lambda: VALIDITY_DAYS)

    def validity_for(self, controlled: bool) -> tuple[str, int]:
        kind = "controlled" if controlled else "other"
        return kind, self.validity_days.get(kind, VALIDITY_DAYS[kind])


DEFAULT_RULES = MappingRules()
