"""The demo's simulated pharmacist does what README.md says of `make demo`: approves most holds,
rejects some controlled-drug prescriptions, and (the demo's loop) leaves one undecided."""

from __future__ import annotations

import re
from pathlib import Path

from services.ops.demo import review_decision

README = Path(__file__).resolve().parents[2] / "README.md"


def decisions(holds: list[list[str]]) -> list[str]:
    made, controlled_seen = [], 0
    for codes in holds:
        made.append(review_decision(codes, controlled_seen))
        controlled_seen += "CONTROLLED_SUBSTANCE" in codes
    return made


def test_the_first_controlled_drug_hold_and_every_other_one_after_it_is_rejected_the_rest_approved() -> None:
    holds = [
        ["CONTROLLED_SUBSTANCE"],
        ["MODERATE_INTERACTION"],
        ["CONTROLLED_SUBSTANCE"],
        ["CONTROLLED_SUBSTANCE", "HIGH_RISK_DRUG"],
        ["HIGH_RISK_DRUG"],
    ]
    assert decisions(holds) == ["reject", "approve", "approve", "reject", "approve"]


def test_any_run_with_a_controlled_drug_hold_rejects_one_and_approves_most() -> None:
    holds = [["MODERATE_INTERACTION"]] * 6 + [["CONTROLLED_SUBSTANCE"]] * 3
    made = decisions(holds)
    assert made.count("reject") == 2 and made.count("approve") == 7


def test_the_readme_says_what_the_simulated_pharmacist_does() -> None:
    text = " ".join(README.read_text().split())
    said = re.search(r"some are held for the simulated pharmacist, who ([^.]+)\.", text)
    assert said is not None
    assert "approves most" in said.group(1) and "rejects" in said.group(1) and "controlled-drug" in said.group(1)
    assert "misses one" in said.group(1)
