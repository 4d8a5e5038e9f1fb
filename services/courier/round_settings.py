"""Settings of the delivery-round planner (services/courier/rounds.py), from `PHARMACY_ROUNDS_*`.

A class of its own for now; every field is prefixed `rounds_`, so the courier service's settings
can take them over by inheriting it without a clash.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .roads import GreatCircleRoads, Roads, load_road_matrix
from .rounds import Limits


class RoundSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHARMACY_", extra="ignore")

    rounds_detour_factor: float = Field(
        default=1.3,
        ge=1.0,
        description="Road km per great-circle km (rural roads wind); also for the last mile off a road matrix",
    )
    rounds_road_matrix_file: Path | None = Field(
        default=None,
        description="JSON road distances (and minutes) between listed places; unset: great circle x detour factor "
        "(format: services/courier/roads.py)",
    )
    rounds_speed_kmh: float = Field(default=50.0, gt=0, description="Average speed of a van, stops excluded")
    rounds_max_round_minutes: float = Field(
        default=480, gt=0, description="A round, from leaving the depot to being back, at most this long"
    )
    rounds_cold_chain_minutes: float = Field(
        default=240,
        gt=0,
        description="A cold-chain package is handed over within this long after the van leaves (its time out of "
        "the fridge, in the van's cold box)",
    )
    rounds_service_minutes: float = Field(
        default=5, ge=0, description="At each door: finding the patient, the code, the hand-over"
    )
    rounds_urgent_due_minutes: float = Field(
        default=120,
        gt=0,
        description="An urgent delivery is at the door within this long after the van leaves, or after the "
        "patient's window opens when that is later (or first, when the door is farther)",
    )
    rounds_plan_iterations: int = Field(
        default=1000, ge=1, description="Search iterations per plan: the same request gives the same plan"
    )
    rounds_plan_time_limit_s: float = Field(
        default=2.5,
        gt=0,
        description="A plan stops searching after this long even before its iterations (a slow machine)",
    )
    rounds_plan_seed: int = Field(default=1, description="The search's random seed")

    def limits(self) -> Limits:
        return Limits(
            max_round=timedelta(minutes=self.rounds_max_round_minutes),
            out_of_fridge=timedelta(minutes=self.rounds_cold_chain_minutes),
            service_per_stop=timedelta(minutes=self.rounds_service_minutes),
            urgent_due=timedelta(minutes=self.rounds_urgent_due_minutes),
            iterations=self.rounds_plan_iterations,
            time_limit_s=self.rounds_plan_time_limit_s,
            seed=self.rounds_plan_seed,
        )

    def roads(self) -> Roads:
        """The road network: the matrix file when one is set, else great circle x detour factor."""
        local = GreatCircleRoads(detour_factor=self.rounds_detour_factor, speed_kmh=self.rounds_speed_kmh)
        if self.rounds_road_matrix_file is None:
            return local
        return load_road_matrix(self.rounds_road_matrix_file, local=local)
