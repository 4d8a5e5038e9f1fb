"""Each kind of user drives the `pharmacy` tool as they would, at 80 columns, against the running
system, and the test reads what the tool printed: an integrator whose reused prescription id is
refused, a pharmacist who is told of a new hold and can decide from `review show`, a courier who
sees only open work and whose wrong code is refused at the door, a clerk whose `adjust -12` is in
the ledger with who and why."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services.cli import main as cli
from services.ops.devstack import DevStack
from services.ops.simulation import wrong_code
from services.runtime.credentials import courier_token
from services.runtime.delivery_codes import delivery_code
from tests.support.scenario import (
    System,
    courier,
    drug,
    prescription_message,
    scripted_couriers,
    stocked_drugs,
    unique,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: The services answer within a second on an idle machine; the suite's machine is not idle.
ANSWER_WAIT_S = "30"


def environment(system: System, **extra: str) -> dict[str, str]:
    """What a person's shell holds to reach this stack: its broker and database, a terminal of 80."""
    settings = system.settings
    return {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PHARMACY_MONGO_URL": settings.mongo_url.get_secret_value(),
        "PHARMACY_ANSWER_WAIT_S": ANSWER_WAIT_S,
        "COLUMNS": "80",
        **extra,
    }


async def pharmacy(env: dict[str, str], *arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(arguments), env=env)


def secret(value: object) -> str:
    return value.get_secret_value() if value is not None else ""  # type: ignore[attr-defined]


async def test_an_integrator_is_told_a_prescription_was_accepted_and_a_reused_id_refused(
    system: System, tmp_path: Path
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    await stocked_drugs(system, metformin)
    rx = unique("RX-INTEGRATOR")
    first = prescription_message(rx, [(metformin.drug_code, 30)]).prescription
    reused = first.model_copy(update={"items": [first.items[0].model_copy(update={"quantity": 60})]})
    (tmp_path / "first.json").write_text(first.model_dump_json())
    (tmp_path / "reused.json").write_text(reused.model_dump_json())
    env = environment(
        system,
        PHARMACY_SIGNING_KEY_ID=system.settings.signing_key_id or "",
        PHARMACY_SIGNING_SECRET=secret(system.settings.signing_secret),
    )

    accepted = await pharmacy(env, "submit", str(tmp_path / "first.json"), "--sender-id", "hospital-test")
    assert accepted.exit_code == 0, accepted.output
    assert f"prescription {rx}: accepted" in accepted.output

    refused = await pharmacy(env, "submit", str(tmp_path / "reused.json"), "--sender-id", "hospital-test")
    assert refused.exit_code == 1, refused.output
    assert "REFUSED (prescription_id_reused)" in refused.output and rx in refused.output


async def test_a_pharmacist_is_told_of_a_hold_and_review_show_has_what_to_decide_with(system: System) -> None:
    metformin, warfarin = drug(unique("MET"), "biguanide"), drug(unique("WAR"), "anticoagulant", high_risk=True)
    await stocked_drugs(system, metformin, warfarin)
    patient = unique("PAT-PHARMACIST")
    earlier, held = unique("RX-EARLIER"), unique("RX-HELD")
    await system.publish(prescription_message(earlier, [(metformin.drug_code, 30)], patient_id=patient))

    async def approved() -> bool:
        status = await system.status(earlier)
        return status is not None and any(h.stage.value == "approved" for h in status.history)

    await wait_until(approved, "the earlier prescription approved: the patient's active medicine")

    env = environment(system, PHARMACY_PHARMACIST_KEY=secret(system.settings.pharmacist_key))
    # The announcement, as a pharmacist's open terminal shows it (from the topic's start: the
    # hold is announced whenever the watch's consumer joins).
    watching = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("pharmacy")),
        *("review", "watch", "--from-beginning"),
        env={**os.environ, **env, "COLUMNS": "200"},  # one announcement, one line
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await system.publish(
            prescription_message(held, [(warfarin.drug_code, 30)], patient_id=patient, allergies=["sulfonamides"])
        )
        await system.wait_stage(held, "held_for_review")
        announced = await asyncio.wait_for(_line_with(watching, f"HELD {held}"), timeout=60)
    finally:
        watching.terminate()
        await watching.wait()
    assert "HIGH_RISK" in announced and f"pharmacy review show {held}" in announced

    shown = await pharmacy(env, "review", "show", held)
    assert shown.exit_code == 0, shown.output
    assert "sulfonamides" in shown.output, "the patient's allergies"
    assert metformin.drug_code in shown.output, "the medicine the patient already takes"
    assert warfarin.drug_code in shown.output and "HIGH_RISK" in shown.output, "the line and the rule that held it"
    assert "…" not in shown.output


async def _line_with(process: asyncio.subprocess.Process, text: str) -> str:
    """The first line the process prints that holds `text`."""
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode("utf-8", "replace")
        if text in line:
            return line
    raise AssertionError(f"the process ended without a line with {text!r}")


async def test_a_courier_sees_only_open_work_with_a_geo_uri_and_a_wrong_code_is_refused(
    system: System, services: DevStack
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    only_courier = courier("Dana")
    warehouse = unique("WH-COURIER")
    await system.seed(formulary=[metformin], couriers=[only_courier], stock=[(warehouse, metformin.drug_code, 100)])
    done, open_ = unique("RX-DONE"), unique("RX-OPEN")
    simulator = scripted_couriers(system.settings, {done: ["deliver"], open_: ["hold-after-pickup"]})
    simulator.start()
    try:
        await system.publish(prescription_message(done, [(metformin.drug_code, 10)]))
        await system.wait_stage(done, "delivered")
        await system.publish(prescription_message(open_, [(metformin.drug_code, 10)]))
        await system.wait_stage(open_, "picked_up")
    finally:
        await simulator.stop()
    (offer,) = [o for o in simulator.offers if o.package_id == open_]
    key = secret(system.settings.courier_gateway_key).encode()
    gateway = next(url for name, url in services.http_urls().items() if name.startswith("courier"))
    env = environment(system, PHARMACY_COURIER_TOKEN=courier_token(key, offer.courier_id))

    jobs = await pharmacy(
        env, "courier", "jobs", offer.courier_id, "--gateway", gateway, "--token", courier_token(key, offer.courier_id)
    )
    assert jobs.exit_code == 0, jobs.output
    assert offer.dispatch_id in jobs.output and "picked_up" in jobs.output
    assert "geo:" in jobs.output and done not in jobs.output, "open work only, the door as a geo: URI"

    wrong = wrong_code(delivery_code(secret(system.settings.delivery_code_key).encode(), open_))
    report = ["courier", "report", offer.dispatch_id, "delivered", "--courier", offer.courier_id]
    at_the_door = await pharmacy(env, *report, "--package", open_, "--code", wrong)
    assert at_the_door.exit_code == 1, at_the_door.output
    assert "REFUSED (wrong_code)" in at_the_door.output


async def test_a_clerks_adjustment_of_minus_twelve_is_answered_and_in_the_ledger_with_who_and_why(
    system: System,
) -> None:
    metformin = drug(unique("MET"), "biguanide")
    warehouse, lot = unique("WH-CLERK"), unique("LOT-CLERK")
    await system.seed(
        formulary=[metformin],
        couriers=[courier("Erlan")],
        stock=[(warehouse, metformin.drug_code, 100, lot, date.today() + timedelta(days=400))],
    )
    env = environment(system)
    adjusted = await pharmacy(
        env, "warehouse", "adjust", warehouse, metformin.drug_code, "-12", "--lot", lot,
        "--reason", "water damage", "--by", "Aliya",
    )  # fmt: skip
    assert adjusted.exit_code == 0, adjusted.output
    assert "adjustment of -12" in adjusted.output and "88" in adjusted.output, "what is left, as inventory said"

    refused = await pharmacy(
        env, "warehouse", "adjust", warehouse, metformin.drug_code, "-1000", "--lot", lot,
        "--reason", "miscount", "--by", "Aliya",
    )  # fmt: skip
    assert refused.exit_code == 1 and "REFUSED" in refused.output, refused.output

    ledger: list[Result] = []

    async def in_the_ledger() -> bool:
        ledger[:] = [await pharmacy({**env, "COLUMNS": "200"}, "warehouse", "ledger", warehouse, lot)]
        return "Aliya" in ledger[0].output

    await wait_until(in_the_ledger, "the adjustment in the ledger")
    lines = [line for line in ledger[0].output.splitlines() if "Aliya" in line]
    assert len(lines) == 1 and "water damage" in lines[0] and "12" in lines[0], ledger[0].output
