"""Every `PHARMACY_*` variable the README, the deployment guide, docker-compose.yml and the
Kubernetes manifests tell people to set is one the code reads: a renamed or misspelt setting in a
runbook would otherwise be ignored without a word (pydantic-settings ignores unknown variables)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from pydantic_settings import BaseSettings

import services
from services.ops import faults

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    ROOT / "deploy" / "PRODUCTION.md",
    ROOT / "docker-compose.yml",
    ROOT / "deploy" / "compose.env.example",
    *sorted((ROOT / "deploy" / "k8s").glob("*.yaml")),
]


def read_by_the_code() -> set[str]:
    """The variables of every settings class of the services and tools, and the fault switches."""
    names: set[str] = set()
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if module.name.endswith("__main__"):  # running one would start a service
            continue
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
                prefix = str(value.model_config.get("env_prefix", ""))
                names |= {f"{prefix}{field}".upper() for field in value.model_fields}
    names |= set(re.findall(r"PHARMACY_FAULT_[A-Z_]+", Path(faults.__file__).read_text()))
    return names


def test_every_variable_the_documents_name_is_read_by_the_code() -> None:
    known = read_by_the_code()
    named = {
        (variable, document.relative_to(ROOT).as_posix())
        for document in DOCUMENTS
        for variable in re.findall(r"PHARMACY_[A-Z0-9_]*[A-Z0-9]", document.read_text())
    }
    assert len(named) > 40, "the documents were read"
    assert sorted((v, d) for v, d in named if v not in known) == []
