"""What the production image installs: the package built from pyproject.toml (as deploy/Dockerfile
builds it), without the development tools or any way to arm a fault, from a pinned base."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_leaves_out_the_development_tools_and_the_fault_hooks(tmp_path: Path) -> None:
    # What the image's build stage copies (a build/ left in a working tree would leak into a wheel).
    source = tmp_path / "src"
    shutil.copytree(ROOT / "services", source / "services", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pharmacy_fulfillment-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
        (entry_points,) = [archive.read(n).decode() for n in names if n.endswith("entry_points.txt")]
    assert any(name.startswith("services/runtime/") for name in names), "the runtime is in it"
    assert any(name.startswith("services/consultation/") for name in names)
    assert not [name for name in names if name.startswith("services/ops/")], "no dev stack, bench, chaos, demo"
    assert not [name for name, text in sources.items() if "PHARMACY_FAULT" in text], "no fault can be armed"
    assert [f"{name}:{line}" for name, text in sources.items() for line in _unguarded_dev_imports(text)] == []
    assert "services.ops" not in entry_points and "pharmacy-dev" not in entry_points
    assert "pharmacy = services.cli.main:main" in entry_points
    assert "services/consultation/data/gazetteer.json" in names, "the county gazetteer ships with consultation"
    catalogs = [
        f"services/consultation/locale/{language}/LC_MESSAGES/notifications.po" for language in ("ug", "zh", "en")
    ]
    assert set(catalogs) <= set(names), "the patients' notifications ship in every language, read as .po"


def test_the_image_is_built_from_a_pinned_base_and_checks_the_tools_are_out() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(bases) == 2 and all(
        re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", b) for b in bases
    )
    assert '! python -c "import services.ops"' in dockerfile
    for pyproject in (ROOT / "pyproject.toml", ROOT / "contracts" / "pyproject.toml"):
        assert re.search(r'^requires = \["setuptools==[\d.]+"\]$', pyproject.read_text(), re.M), pyproject


def _unguarded_dev_imports(source: str) -> list[int]:
    """Lines importing `services.ops` outside a `try` that falls back on `ImportError`."""
    tree = ast.parse(source)
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.Try)
        and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in block.handlers)
        for statement in block.body
        for node in ast.walk(statement)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom | ast.Import)
        and any(name.startswith("services.ops") for name in _imported(node))
        and id(node) not in guarded
    ]


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
