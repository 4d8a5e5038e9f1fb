from pathlib import Path

from babel.dates import get_timezone
from pydantic import Field, SecretStr, field_validator

from pharmacy_contracts.consultation import PatientLanguage
from services.runtime.settings import RuntimeSettings

from .fhir import LICENCE_REGISTRIES, VALIDITY_DAYS, MappingRules


class ConsultationSettings(RuntimeSettings):
    sender_keys: dict[str, dict[str, SecretStr]] = Field(
        default_factory=dict,
        description=(
            "Registered upstream systems: sender id -> key id -> HMAC secret, as JSON in "
            "PHARMACY_SENDER_KEYS. Several keys per sender let keys rotate."
        ),
    )
    delivery_code_key: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="PHARMACY_DELIVERY_CODE_KEY: required here; patients' delivery codes are derived from it",
    )

    gazetteer_file: Path | None = Field(
        default=None,
        description="PHARMACY_GAZETTEER_FILE: the county's places (JSON, as services/consultation/data/gazetteer.json, "
        "which is the default) that place addresses arriving without coordinates",
    )
    # Uyghur: in a rural Xinjiang county most patients speak Uyghur at home, and many older ones read
    # little Chinese; a message they cannot read is worse than none. A hospital that knows better says
    # so per patient (FHIR Patient.communication, or the prescription's `preferred_language`); a
    # county where most patients read Chinese sets "zh".
    default_patient_language: PatientLanguage = Field(
        default="ug",
        description="PHARMACY_DEFAULT_PATIENT_LANGUAGE: the language (ug, zh or en) patients are told things in "
        "when their prescription does not say which they prefer",
    )
    # Beijing time: the official clock, the one hospitals, couriers and delivery rounds plan in. The
    # texts name the clock ("Beijing time"), since many Uyghur speakers live by Xinjiang time, two hours behind.
    patient_timezone: str = Field(
        default="Asia/Shanghai",
        description="PHARMACY_PATIENT_TIMEZONE: the IANA time zone of the times in patients' messages "
        "(Asia/Urumqi for Xinjiang time)",
    )
    fhir_licence_registries: dict[str, str] = Field(
        default_factory=lambda: dict(LICENCE_REGISTRIES),
        description=(
            "FHIR identifier systems whose values are prescriber licences -> the registry's short name, as JSON in "
            "PHARMACY_FHIR_LICENCE_REGISTRIES (first listed wins); replaces the built-in list of national bodies"
        ),
    )
    fhir_validity_days: dict[str, int] = Field(
        default_factory=lambda: dict(VALIDITY_DAYS),
        description=(
            "Days a FHIR prescription without validityPeriod.end stays valid from its issue, per class: "
            '{"controlled": 28, "other": 180} (PHARMACY_FHIR_VALIDITY_DAYS)'
        ),
    )

    @field_validator("patient_timezone")
    @classmethod
    def _timezone_is_known(cls, timezone: str) -> str:
        try:
            get_timezone(timezone)
        except LookupError:
            raise ValueError(f"{timezone!r} is not an IANA time zone (Asia/Shanghai, Asia/Urumqi...)") from None
        return timezone

    # A field validator, not a model validator: its error shows only this field's input, never the
    # other settings (sender keys are secrets too).
    @field_validator("delivery_code_key")
    @classmethod
    def _delivery_code_key_is_set(cls, key: SecretStr | None) -> SecretStr:
        # Without it no patient gets a proof-of-delivery code and no delivery can count: refuse to
        # start rather than run a pharmacy that can never deliver.
        if key is None or not key.get_secret_value().strip():
            raise ValueError(
                "PHARMACY_DELIVERY_CODE_KEY is not set: consultation derives each patient's delivery code "
                "from it, and the courier service must hold the same key to check the codes couriers report"
            )
        return key

    def fhir_rules(self) -> MappingRules:
        return MappingRules(licence_registries=self.fhir_licence_registries, validity_days=self.fhir_validity_days)

    def secrets(self) -> dict[str, dict[str, bytes]]:
        return {
            sender: {key_id: secret.get_secret_value().encode() for key_id, secret in keys.items()}
            for sender, keys in self.sender_keys.items()
        }

    def delivery_code_secret(self) -> bytes:
        if self.delivery_code_key is None:  # unreachable: checked when the settings were read
            raise RuntimeError("PHARMACY_DELIVERY_CODE_KEY is not set")
        return self.delivery_code_key.get_secret_value().encode()
