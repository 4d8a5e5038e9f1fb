"""`make mutation`: mutmut over the guarantee modules, then a score per module.

1. Starts from a clean slate (removes `mutants/`), so the result never depends on an earlier run.
2. Starts one dev database (nx-27017) for the whole run and hands it to the store's tests through
   `PHARMACY_TEST_MONGO_URL`: every mutant's run reuses it (each test writes to collections of
   its own, dropped after it) instead of starting a database per mutant.
3. Runs `mutmut run` on the mutants of `mutation_report.SCOPE` only, with the tests configured in
   `[tool.mutmut]` of pyproject.toml; mutmut's own output goes to `mutation-results/mutmut.log`,
   and a progress line is printed every minute.
4. Stops the database and prints the per-module table (`services.ops.mutation_report`).

    python -m services.ops.mutation_run [--children 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from services.ops import mutation_report
from services.ops.devstack import standalone_database

RESULTS = Path("mutation-results")


def progress() -> tuple[int, int]:
    """(mutants decided, mutants in scope) from mutmut's meta files so far."""
    done = total = 0
    for path in mutation_report.SCOPE:
        meta = Path("mutants") / f"{path}.meta"
        if not meta.exists():
            continue
        with contextlib.suppress(ValueError, KeyError):
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            for mutant, code in codes.items():
                if mutation_report.in_scope(path, mutant):
                    total += 1
                    done += code is not None
    return done, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # One at a time by default: the children share one dev database, and the store tests of two
    # mutants at once were seen to disturb each other.
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    args = parser.parse_args(argv)

    shutil.rmtree("mutants", ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    log_path = RESULTS / "mutmut.log"
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(args.children), *mutation_report.mutant_globs()]
    started = time.monotonic()
    with standalone_database() as url, log_path.open("w") as log:
        print(f"mutmut over {len(mutation_report.SCOPE)} modules, {args.children} at once; its log: {log_path}")
        env = {**os.environ, "PHARMACY_TEST_MONGO_URL": url}
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while run.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(60)
                done, total = progress()
                minutes = (time.monotonic() - started) / 60
                print(f"  {minutes:5.1f} min: {done}/{total} mutants decided", flush=True)
        except KeyboardInterrupt:
            run.send_signal(2)  # mutmut stops its workers on SIGINT
            run.wait()
            raise
    seconds = time.monotonic() - started
    if run.returncode != 0:
        print(f"mutmut failed (exit {run.returncode}); the end of {log_path}:", file=sys.stderr)
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        return run.returncode
    print(f"done in {seconds / 60:.1f} min")
    return mutation_report.main(["--seconds", str(seconds)])


if __name__ == "__main__":
    sys.exit(main())
