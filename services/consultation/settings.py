from services.runtime.settings import RuntimeSettings


class ConsultationSettings(RuntimeSettings):
    """Nothing of its own yet: the consultation service runs on the shared settings."""
