"""README.md's day-to-day section is executable documentation: every command of its `sh` blocks
runs, in order, as a person would type it, on the stack the block's own `make up` starts (in a
home and on ports of this test's own, so it never meets a developer's `.devstack`), and none may
exit non-zero or print a traceback.

Two kinds of line are run differently, and only these: `make down` ends the run instead of coming
second (it stops what every later line needs), and the commands that follow a topic live until a
person stops them (`watch`, `inbox`) run for a few seconds and are then stopped, as Ctrl-C would.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from services.ops.devstack import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Using it day to day"
#: Commands that follow a topic until stopped; `timeout` stops them as a person would.
LIVE = ("pharmacy warehouse watch", "pharmacy review watch", "pharmacy courier inbox")
LIVE_FOR_S = 4
#: `timeout`'s exit status for a command it stopped.
STOPPED = 124
#: Generous: a command waits for its answer; the suite's machine is busy.
COMMAND_TIMEOUT_S = 180


def day_to_day_commands(readme: str) -> list[str]:
    """The command lines of the section's `sh` blocks, in order (blank and comment lines dropped;
    a comment after a command is the shell's business)."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else None]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    return [
        line for block in blocks for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_sections_commands_are_found() -> None:
    commands = day_to_day_commands((ROOT / "README.md").read_text())
    assert commands[0].startswith("make up") and commands[1].startswith("make down")
    assert sum(line.startswith("pharmacy ") for line in commands) >= 30


def test_every_day_to_day_command_of_the_readme_runs_in_order_on_a_fresh_stack(tmp_path: Path) -> None:
    commands = day_to_day_commands((ROOT / "README.md").read_text())
    # The services' HTTP ports count up from a base: nothing else may fall in that range.
    http = free_port()
    ports = list(range(http, http + 20))
    for _ in range(3):
        ports.append(free_port(ports))
    kafka, mongo, board = ports[-3:]
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("PHARMACY_")},
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PHARMACY_DEV_HOME": str(tmp_path / "stack"),
        "PHARMACY_DEV_KAFKA_PORT": str(kafka),
        "PHARMACY_DEV_MONGO_PORT": str(mongo),
        "PHARMACY_DEV_HTTP_PORT": str(http),
        "PHARMACY_BOARD_PORT": str(board),
        "PHARMACY_ANSWER_WAIT_S": "60",
        "COLUMNS": "100",
    }
    teardown = [line for line in commands if line.startswith("make down")]
    ran: list[str] = []
    try:
        for line in commands:
            if line in teardown:
                continue
            live = line.startswith(LIVE)
            argv = ["timeout", str(LIVE_FOR_S), "bash", "-c", line] if live else ["bash", "-o", "pipefail", "-c", line]
            done = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
            printed = done.stdout + done.stderr
            ran.append(f"$ {line}\n{printed}")
            expected = STOPPED if live else 0
            assert done.returncode == expected, "\n".join(ran[-3:]) + f"\nexit {done.returncode}, not {expected}"
            assert "Traceback" not in printed, "\n".join(ran[-1:])
    finally:
        for line in teardown:
            subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, timeout=COMMAND_TIMEOUT_S, check=False)
    assert len(ran) == len(commands) - len(teardown)
