from datetime import timedelta

from pydantic import Field, model_validator

from services.runtime.settings import RuntimeSettings

from .domain import DEFAULT_REFILL_TOLERANCE, ReviewPolicy


class PrescriptionSettings(RuntimeSettings):
    """The formulary, prescriber registry and interaction table live in the service's own collections
    (`pharmacy formulary load`, `pharmacy review load-prescribers`, `pharmacy review load-interactions`)."""

    review_escalate_after_s: float = Field(
        default=4 * 3600, gt=0, description="A hold no pharmacist decided within this is escalated"
    )
    review_expire_after_s: float = Field(
        default=24 * 3600, gt=0, description="A hold no pharmacist decided within this is rejected (REVIEW_EXPIRED)"
    )
    refill_tolerance: float = Field(
        default=DEFAULT_REFILL_TOLERANCE,
        gt=0,
        le=1,
        description="Share of an earlier supply of the same drug that must have passed before a refill goes through",
    )

    @model_validator(mode="after")
    def _expiry_after_escalation(self) -> "PrescriptionSettings":
        if self.review_expire_after_s <= self.review_escalate_after_s:
            raise ValueError("review_expire_after_s must be longer than review_escalate_after_s")
        return self

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy(
            escalate_after=timedelta(seconds=self.review_escalate_after_s),
            expire_after=timedelta(seconds=self.review_expire_after_s),
            refill_tolerance=self.refill_tolerance,
        )
