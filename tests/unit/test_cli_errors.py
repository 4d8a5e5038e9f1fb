"""The `pharmacy` tool answers a failure with one line saying what to do, never a traceback (unless
`--debug`), and finds the dev stack `make up` started wherever its ports are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel, ValidationError
from pymongo.errors import ServerSelectionTimeoutError

from services.cli import main as cli
from services.cli.running import one_line, settings_from_env


class _Shape(BaseModel):
    quantity: int
    town: str


def _validation_error() -> ValidationError:
    try:
        _Shape.model_validate({"quantity": "many"})
    except ValidationError as error:
        return error
    raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("PHARMACY_KAFKA_BOOTSTRAP_SERVERS", "PHARMACY_MONGO_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PHARMACY_DEV_HOME", str(tmp_path))
    return tmp_path


def test_an_unreachable_database_names_its_hosts_never_its_password(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PHARMACY_MONGO_URL", "mongodb://svc:s3cret@m1:27017,m2:27017/?replicaSet=rs0")
    line = one_line(ServerSelectionTimeoutError("m1:27017: [Errno 111] Connection refused"))
    assert line == (
        "the database at m1:27017,m2:27017 does not answer: start the dev stack (`make up`) or set PHARMACY_MONGO_URL"
    )
    assert "s3cret" not in line


def test_an_unreachable_broker_and_bad_input_are_one_line_each():
    assert one_line(KafkaConnectionError()).startswith("the broker at 127.0.0.1:19092 does not answer")
    assert (
        one_line(_validation_error())
        == "not valid: quantity: Input should be a valid integer, unable to parse string as an integer (and 1 more)"
    )
    try:
        json.loads("{bad")
    except json.JSONDecodeError as error:
        assert one_line(error) == "not JSON: Expecting property name enclosed in double quotes at line 1, column 2"


def test_the_dev_stacks_recorded_ports_are_found_and_the_environment_still_wins(
    no_stack: Path, monkeypatch: pytest.MonkeyPatch
):
    assert settings_from_env().kafka_bootstrap_servers == "127.0.0.1:19092", "no stack: the defaults"
    (no_stack / "stack.env").write_text(
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092\nPHARMACY_MONGO_URL=mongodb://127.0.0.1:37117\n"
    )
    found = settings_from_env()
    assert (found.kafka_bootstrap_servers, found.mongo_url.get_secret_value()) == (
        "127.0.0.1:29092",
        "mongodb://127.0.0.1:37117",
    )
    monkeypatch.setenv("PHARMACY_KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    assert settings_from_env().kafka_bootstrap_servers == "kafka.example:9092"


def test_a_command_that_fails_prints_one_line_and_exits_1_and_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    broken = tmp_path / "prescription.json"
    broken.write_text("{bad")
    monkeypatch.setattr(sys, "argv", ["pharmacy", "submit", str(broken), "--sender-id", "hospital-a"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    shown = capsys.readouterr().out
    assert "not JSON: Expecting property name enclosed in double quotes" in shown and "Traceback" not in shown

    monkeypatch.setattr(sys, "argv", ["pharmacy", "--debug", "submit", str(broken), "--sender-id", "hospital-a"])
    with pytest.raises(json.JSONDecodeError):
        cli.main()
