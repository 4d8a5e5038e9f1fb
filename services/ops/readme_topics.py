"""Rewrites the generated parts of README.md: topics and message shapes from the contracts, and the
reasons messages are refused with from services/runtime/reasons.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pharmacy_contracts.schemas import messages_markdown, topics_markdown
from services.runtime.reasons import reasons_markdown

START, END = "<!-- generated:contracts:start -->", "<!-- generated:contracts:end -->"
REASONS_START, REASONS_END = "<!-- generated:reasons:start -->", "<!-- generated:reasons:end -->"


def render() -> str:
    return f"{START}\n{topics_markdown()}\n\n{messages_markdown()}\n{END}"


def render_reasons() -> str:
    return f"{REASONS_START}\n{reasons_markdown()}\n{REASONS_END}"


def rewrite(path: Path) -> bool:
    text = path.read_text()
    updated = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: render(), text, flags=re.S)
    updated = re.sub(
        re.escape(REASONS_START) + r".*?" + re.escape(REASONS_END), lambda _: render_reasons(), updated, flags=re.S
    )
    changed = updated != text
    path.write_text(updated)
    return changed


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{target}: {'updated' if rewrite(target) else 'already current'}")
