from pydantic import Field, SecretStr

from services.runtime.settings import RuntimeSettings


class ConsultationSettings(RuntimeSettings):
    sender_keys: dict[str, dict[str, SecretStr]] = Field(
        default_factory=dict,
        description=(
            "Registered upstream systems: sender id -> key id -> HMAC secret, as JSON in "
            "PHARMACY_SENDER_KEYS. Several keys per sender let keys rotate."
        ),
    )

    def secrets(self) -> dict[str, dict[str, bytes]]:
        return {
            sender: {key_id: secret.get_secret_value().encode() for key_id, secret in keys.items()}
            for sender, keys in self.sender_keys.items()
        }
