"""The code and identifier systems the mapping reads and writes: the pharmacy's own (formulary,
prescriber licence, prescription and delivery ids, the sender namespace in Bundle.meta.source) and the
standard ones it recognises (UCUM, SNOMED CT, HL7 v2 identifier types, the geolocation extension).
"""

#: Our own code and identifier systems; upstream systems use them where the pharmacy's meaning is needed.
BASE = "https://pharmacy.example.org/fhir"
FORMULARY_SYSTEM = f"{BASE}/CodeSystem/formulary"
LICENCE_SYSTEM = f"{BASE}/sid/prescriber-licence"
PRESCRIPTION_SYSTEM = f"{BASE}/sid/prescription"
DELIVERY_SYSTEM = f"{BASE}/sid/delivery"
#: The reason codes of refusals (README: Reason codes), in an OperationOutcome's issue details.
REASON_SYSTEM = f"{BASE}/CodeSystem/reason"
#: Bundle.meta.source in this namespace names the sending system; it must match the signature's sender.
SENDER_SOURCE_PREFIX = f"{BASE}/sender/"

#: Standard systems and extensions recognised in upstream bundles and used in the statuses sent back.
GEOLOCATION = "http://hl7.org/fhir/StructureDefinition/geolocation"
V2_IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
UCUM = "http://unitsofmeasure.org"
COURSE_OF_THERAPY = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"
SNOMED = "http://snomed.info/sct"
#: Languages (Patient.communication.language), as BCP 47 tags: ug-CN, zh-CN, en-GB.
BCP47 = "urn:ietf:bcp:47"

#: National extensions on MedicationRequest the pharmacist is shown: the controlled-drug schedule and
#: quantity in words, and prescription endorsements (England's NHS EPS / UK Core).
CONTROLLED_DRUG_EXTENSIONS = frozenset(
    {
        "https://fhir.nhs.uk/StructureDefinition/Extension-DM-ControlledDrug",
        "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationControlledDrug",
        "https://fhir.nhs.uk/StructureDefinition/Extension-Medication-ControlledDrug",
    }
)
ENDORSEMENT_EXTENSIONS = frozenset(
    {
        "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionEndorsement",
        "https://fhir.nhs.uk/StructureDefinition/Extension-EPS-PrescriptionEndorsement",
    }
)
