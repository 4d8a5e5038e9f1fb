"""The AsyncAPI documents in docs/asyncapi are generated from the apps; these fail when they drift."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from pharmacy_contracts import client, signing
from pharmacy_contracts.consultation import EXAMPLE_PRESCRIPTION
from pharmacy_contracts.topics import ALL_TOPICS, BY_NAME
from services.ops import asyncapi

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "asyncapi"
#: The official AsyncAPI 3.0.0 JSON Schema from @asyncapi/specs 6.11.1 (see the README next to it).
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
ASYNCAPI_SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"
COMMITTED = sorted(DOCS.glob("*.yaml"))


@cache
def generated(service: str) -> str:
    return asyncapi.generate(service)


@cache
def document(service: str) -> dict[str, Any]:
    return yaml.safe_load(generated(service))


@pytest.mark.parametrize("service", asyncapi.SERVICES)
def test_committed_asyncapi_documents_match_the_apps(service: str) -> None:
    committed = DOCS / f"{service}.yaml"
    assert committed.exists() and committed.read_text() == generated(service), (
        f"docs/asyncapi/{service}.yaml no longer matches the code: run `make asyncapi` and commit docs/asyncapi"
    )


@pytest.mark.parametrize("service", asyncapi.SERVICES)
def test_documents_are_asyncapi_3_and_every_reference_resolves(service: str) -> None:
    doc = document(service)

    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["development"]["host"] == "kafka:9092"  # fixed: no machine's address leaks in
    for ref in _refs(doc):
        _resolve(doc, ref)
    assert all(name.replace(".", "").replace("_", "").isalnum() for name in doc["components"]["schemas"])


@pytest.mark.parametrize("service", asyncapi.SERVICES)
def test_each_topic_lists_its_contract_messages_titled_described_and_exemplified(service: str) -> None:
    doc = document(service)

    for name, channel in doc["channels"].items():
        topic = BY_NAME[name]
        assert channel["address"] == name
        assert list(channel["messages"]) == [m.__name__ for m in topic.messages]
        for contract in topic.messages:
            message = doc["components"]["messages"][contract.__name__]
            assert message["title"] == contract.__name__
            assert message["name"] == contract.model_fields["type"].default
            assert " ".join((contract.__doc__ or "").split()[:4]) in message["description"]
            example = message["examples"][0]
            assert type(topic.parse(json.dumps(example["payload"]))) is contract
            assert example["headers"]["message-type"] == message["name"]
            assert (ROOT / "docs" / "asyncapi" / message["x-json-schema"]).resolve().exists()


def test_the_vendored_asyncapi_schema_is_the_published_one_and_a_valid_draft_07_schema() -> None:
    schema = asyncapi_schema()

    # An edited copy could let a broken document through: it must stay the package's file.
    assert hashlib.sha256(ASYNCAPI_SCHEMA.read_bytes()).hexdigest() == ASYNCAPI_SCHEMA_SHA256
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft7Validator
    jsonschema.Draft7Validator.check_schema(schema)


def test_every_service_has_a_committed_document() -> None:
    """So the validation below, one test per file in docs/asyncapi, cannot run over nothing."""
    assert [path.stem for path in COMMITTED] == sorted(asyncapi.SERVICES)


@pytest.mark.parametrize("path", COMMITTED, ids=[path.name for path in COMMITTED])
def test_committed_documents_are_valid_asyncapi_3_0_0(path: Path) -> None:
    errors = list(failures(asyncapi_validator().iter_errors(yaml.safe_load(path.read_text()))))
    assert errors == [], f"{path.name} is not valid AsyncAPI 3.0.0"


def _first(mapping: dict[str, Any]) -> Any:
    return next(iter(mapping.values()))


#: Broken copies of a committed document, and where and why the official schema must refuse each.
BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    "address of the wrong type": (
        lambda doc: doc["channels"]["consultation.intake.v1"].update(address=42),
        "channels/consultation.intake.v1/address",
        "42 is not of type 'string', 'null'",
    ),
    "an AsyncAPI 2 action": (
        lambda doc: doc["operations"]["receive.consultation.intake.v1"].update(action="publish"),
        "operations/receive.consultation.intake.v1/action",
        "'publish' is not one of ['send', 'receive']",
    ),
    "an operation's channel by name, not by reference": (
        lambda doc: doc["operations"]["receive.consultation.intake.v1"].update(channel="consultation.intake.v1"),
        "operations/receive.consultation.intake.v1/channel",
        "'consultation.intake.v1' is not of type 'object'",
    ),
    "an AsyncAPI 2 publish in a channel": (
        lambda doc: doc["channels"]["consultation.intake.v1"].update(publish={"message": {}}),
        "channels/consultation.intake.v1",
        "'publish' does not match any of the regexes: '^x-[\\\\w\\\\d\\\\.\\\\x2d_]+$'",
    ),
    "another version": (lambda doc: doc.update(asyncapi="2.6.0"), "asyncapi", "'3.0.0' was expected"),
    "info without a title": (lambda doc: doc["info"].pop("title"), "info", "'title' is a required property"),
    "a server without a protocol": (
        lambda doc: doc["servers"]["development"].pop("protocol"),
        "servers/development",
        "'protocol' is a required property",
    ),
    "a Kafka binding of the wrong shape": (
        lambda doc: doc["operations"]["receive.consultation.intake.v1"]["bindings"]["kafka"].update(groupId=42),
        "operations/receive.consultation.intake.v1/bindings/kafka/groupId",
        "42 is not of type 'object', 'boolean'",
    ),
    "a payload schema with an unknown type": (
        lambda doc: doc["components"]["messages"]["PrescriptionAccepted"].update(payload={"type": "strin"}),
        "components/messages/PrescriptionAccepted/payload/type",
        "'strin' is not one of ['array', 'boolean', 'integer', 'null', 'number', 'object', 'string']",
    ),
}


@pytest.mark.parametrize(("breakage", "where", "why"), BREAKAGES.values(), ids=BREAKAGES.keys())
def test_broken_copies_of_a_committed_document_are_refused(
    breakage: Callable[[dict[str, Any]], None], where: str, why: str
) -> None:
    broken = copy.deepcopy(committed_document("consultation"))
    breakage(broken)
    assert (where, why) in set(failures(asyncapi_validator().iter_errors(broken)))


def test_consumers_and_producers_are_the_services_own() -> None:
    consultation, inventory = document("consultation"), document("inventory")

    upstream = consultation["operations"]["receive.consultation.prescriptions.v1"]
    assert upstream["bindings"]["kafka"]["groupId"]["enum"] == ["pharmacy.consultation.intake"]
    assert "consultation.prescriptions.v1.dlq" in upstream["description"]
    assert consultation["operations"]["send.consultation.intake.v1"]["action"] == "send"
    # inventory keeps its ledger from its own events: one channel, a send and a receive operation
    assert {"send.inventory.events.v1", "receive.inventory.events.v1"} <= set(inventory["operations"])


@pytest.mark.parametrize("service", asyncapi.SERVICES)
def test_declared_producers_match_the_messages_each_service_constructs(service: str) -> None:
    constructed = asyncapi.constructed_topics(service)
    produced = {topic.name for topic in asyncapi.PRODUCES[service]}
    consumed = set(asyncapi._consumers(asyncapi.build_app(service).broker))

    assert produced <= constructed, f"PRODUCES[{service!r}] names a topic whose messages it never builds"
    # A message built for a consumed topic is input turned into a contract (FHIR), not output.
    assert constructed <= produced | consumed, f"{service} builds messages of {constructed - produced - consumed}"


@pytest.mark.parametrize("service", asyncapi.SERVICES)
def test_embedded_schemas_are_the_published_json_schemas(service: str) -> None:
    schemas = document(service)["components"]["schemas"]

    for name in document(service)["channels"]:
        for contract in BY_NAME[name].messages:
            published = json.loads(
                (ROOT / "contracts" / "schemas" / f"{name}.{contract.__name__}.schema.json").read_text()
            )
            nested = published.pop("$defs", {})
            for key in ("$id", "x-topic"):
                published.pop(key)
            assert schemas[contract.__name__] == _as_component(published), contract.__name__
            for nested_name, nested_schema in nested.items():
                assert schemas[nested_name] == _as_component(nested_schema), f"{contract.__name__}: {nested_name}"


def test_signed_examples_carry_a_signature_the_consultation_gate_would_check() -> None:
    message = document("consultation")["components"]["messages"]["PrescriptionSubmitted"]
    example = message["examples"][0]
    record = client.encode(
        BY_NAME["consultation.prescriptions.v1"].parse(json.dumps(example["payload"])), asyncapi.EXAMPLE_KEY
    )
    keys = {"district-clinic": {"example-key": b"example-secret"}}

    assert signing.verify(record.value, example["headers"], keys) == "district-clinic"
    assert set(message["headers"]["required"]) == set(example["headers"])


def test_every_contract_carries_an_example_its_topic_accepts() -> None:
    for topic in ALL_TOPICS:
        for contract in topic.messages:
            example = contract.model_json_schema()["examples"][0]
            assert type(topic.parse(json.dumps(example))) is contract


def test_the_example_prescription_is_the_one_in_contracts_examples() -> None:
    assert json.loads((ROOT / "contracts" / "examples" / "prescription.json").read_text()) == EXAMPLE_PRESCRIPTION


@cache
def asyncapi_schema() -> dict[str, Any]:
    return json.loads(ASYNCAPI_SCHEMA.read_text())


@cache
def committed_document(service: str) -> dict[str, Any]:
    return yaml.safe_load((DOCS / f"{service}.yaml").read_text())


def _offline(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # everything the schema refers to is embedded in it


@cache
def asyncapi_validator() -> jsonschema.Draft7Validator:
    """The validator the schema's own `$schema` (draft-07) calls for; every definition it refers
    to by `$id` is embedded in the bundled file and registered from it, nothing is fetched."""
    schema = asyncapi_schema()
    registry: Registry = Registry(retrieve=_offline).with_resource(schema["$id"], DRAFT7.create_resource(schema))
    return jsonschema.Draft7Validator(
        schema, registry=registry.crawl(), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def failures(errors: Iterable[ValidationError]) -> Iterator[tuple[str, str]]:
    """Each error by where and why, with the reasons behind a failed `oneOf` (an object or a
    `$ref`, in most of the AsyncAPI schema), where the specific one is."""
    for error in errors:
        yield "/".join(str(part) for part in error.absolute_path), error.message
        yield from failures(error.context or ())


def _as_component(schema: Any) -> Any:
    """A JSON Schema as FastStream embeds it: `$defs` references point into components/schemas."""
    return json.loads(json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/'))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node
