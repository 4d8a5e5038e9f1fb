"""The JSON Schemas and the README's topic tables are generated; these fail when they drift."""

from __future__ import annotations

from pathlib import Path

from pharmacy_contracts.schemas import write_schemas
from services.ops.readme_topics import render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_json_schemas_match_the_contracts(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    committed = {p.name: p.read_text() for p in (ROOT / "contracts" / "schemas").glob("*.json")}
    assert committed == fresh, "run `make contracts` and commit contracts/schemas"


def test_readme_topic_tables_match_the_contracts() -> None:
    assert render() in (ROOT / "README.md").read_text(), "run `make contracts` and commit README.md"
