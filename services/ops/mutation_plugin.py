"""A pytest plugin for `make mutation` only (mutmut passes it with `-p`; `make test` never loads it).

mutmut copies the sources into `mutants/` and runs the tests there, one forked pytest per mutant.
Two things the normal suite does not need:

* **The signature check lives in the contracts package** (`pharmacy_contracts.signing`), which
  is installed from `contracts/` and so would never be imported from `mutants/`. mutmut names a
  mutant after its file's path (`contracts.pharmacy_contracts.signing`), and its trampolines only
  switch to a mutant inside a module of that name: so the mutated copy is imported under that name
  and registered as `pharmacy_contracts.signing` too, before anything imports the package.
* **A mutant that hangs is stopped by mutmut with SIGXCPU**, which would leave the broker and the
  database that the test fixtures started (in sessions of their own) running for ever. On SIGXCPU
  or SIGTERM the plugin kills this pytest process's own children (nothing else), then dies of the
  signal as it would have.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

#: The mutated copy of the signature check, relative to the directory mutmut runs the tests in.
SIGNING_COPY = Path("contracts/pharmacy_contracts/signing.py")

_previous_handlers: dict[int, object] = {}


def _use_mutated_signing() -> None:
    if "pharmacy_contracts.signing" in sys.modules or not SIGNING_COPY.exists():
        return
    mutated = importlib.import_module("contracts.pharmacy_contracts.signing")
    sys.modules["pharmacy_contracts.signing"] = mutated
    import pharmacy_contracts

    pharmacy_contracts.signing = mutated  # type: ignore[attr-defined]


def _children() -> list[int]:
    """This process's child processes, from /proc (their parent pid is field 4 of /proc/PID/stat)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == me:
                found.append(int(stat.parent.name))
    return found


def _kill_children_then_die(signum: int, _: FrameType | None) -> None:
    for pid in _children():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_configure(config: object) -> None:
    _use_mutated_signing()
    for signum in (signal.SIGXCPU, signal.SIGTERM):
        _previous_handlers[signum] = signal.signal(signum, _kill_children_then_die)


def pytest_unconfigure(config: object) -> None:
    for signum, handler in _previous_handlers.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    _previous_handlers.clear()
