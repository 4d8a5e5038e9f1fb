"""Every reason the services refuse a message with is documented once (services/runtime/reasons.py,
and the README's table generated from it), and every documented reason is one the code uses."""

from __future__ import annotations

import ast
from pathlib import Path

from services.ops import readme_topics
from services.runtime.reasons import REASONS

ROOT = Path(__file__).resolve().parents[2]
#: Calls whose first argument is a refusal's reason code.
REFUSING = {"Refused", "refused", "ReportRefused", "SignatureRefused"}


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" assignments (a code given a name, such as UNMAPPABLE)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return found


def codes_in_the_code() -> set[str]:
    codes: set[str] = set()
    sources = [*(ROOT / "services").rglob("*.py"), ROOT / "contracts" / "pharmacy_contracts" / "signing.py"]
    for path in sources:
        if "ops" in path.relative_to(ROOT).parts:
            continue  # development tools refuse nothing of the services'
        tree = ast.parse(path.read_text())
        names = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in REFUSING and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    codes.add(first.value)
                elif isinstance(first, ast.Name) and first.id in names:
                    codes.add(names[first.id])
            for keyword in node.keywords:  # dead_letters.send(..., reason="too_large")
                if keyword.arg == "reason" and called == "send" and isinstance(keyword.value, ast.Constant):
                    codes.add(str(keyword.value.value))
    return codes


def test_every_reason_the_services_refuse_with_is_documented_and_none_more():
    used = codes_in_the_code()
    assert used - set(REASONS) == set(), "refused with, but not in services/runtime/reasons.py"
    assert set(REASONS) - used == set(), "documented, but refused with nowhere"


def test_the_readme_shows_the_table_as_the_code_has_it():
    readme = (ROOT / "README.md").read_text()
    assert readme_topics.render_reasons() in readme, "run `make contracts`"
