from services.runtime.settings import RuntimeSettings


class PrescriptionSettings(RuntimeSettings):
    """The formulary itself lives in the service's collection (`pharmacy formulary load`)."""
