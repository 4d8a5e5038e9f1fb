"""A score per guarantee module from mutmut's results (`mutants/**/*.py.meta`), for `make mutation`.

mutmut reports mutant by mutant; this sums them up per module: how many mutants, how many the
tests killed (a mutant that made the tests hang counts as killed: they noticed), which survived,
and the score. Printed as a table and written with every survivor's diff to
`mutation-results/summary.md`, with the date and the commit it was measured at.

    python -m services.ops.mutation_report [--out mutation-results/summary.md]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

#: The modules that carry the guarantees, and which of their functions count (None: all of them).
#: Of `kafka.py` only the dead-letter path counts: the consumer (`subscribe`, `DeadLetters`, the
#: retries, the tolerant parser and the header and error readers), not broker or topic creation.
SCOPE: dict[str, tuple[str, ...] | None] = {
    "services/runtime/store.py": None,
    "services/runtime/mongo_store.py": None,
    "services/runtime/unit_of_work.py": None,
    "services/runtime/tracking.py": None,
    "services/runtime/relay.py": None,
    "services/runtime/kafka.py": (
        "xǁDeadLettersǁ*",
        "x_subscribe",
        "x__handle_batch_with_retries",
        "x__while_unreachable",
        "x__floors",
        "x__tolerant_parser",
        "x__raw_body",
        "x__headers",
        "x__brief",
    ),
    "services/runtime/security.py": None,
    "services/runtime/logging.py": None,
    "contracts/pharmacy_contracts/signing.py": None,
}
WHAT: dict[str, str] = {
    "services/runtime/store.py": "the batch store's promises, and its in-memory implementation",
    "services/runtime/mongo_store.py": "the batch store on MongoDB: version-guarded saves, lost and failed documents",
    "services/runtime/unit_of_work.py": "the batch unit of work: duplicates skipped, one save per store",
    "services/runtime/tracking.py": "where a message came from (positions per partition)",
    "services/runtime/relay.py": "outbox entries, the outbox relay and publisher",
    "services/runtime/kafka.py": "dead letters: the consumer path, retries, the tolerant parser",
    "services/runtime/security.py": "Kafka SASL/TLS settings, the password masked",
    "services/runtime/logging.py": "redaction of patient data in logs",
    "contracts/pharmacy_contracts/signing.py": "HMAC signature checks of prescriptions",
}
TARGET = 0.90

#: mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped as this report counts them.
KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived"}
NO_TESTS = {33: "no tests", 5: "no tests"}


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def in_scope(path: str, mutant: str) -> bool:
    functions = SCOPE[path]
    if functions is None:
        return True
    function = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    return any(fnmatch.fnmatch(function, pattern) for pattern in functions)


def mutant_globs() -> list[str]:
    """The `mutmut run` arguments that select exactly the mutants in SCOPE."""
    globs = []
    for path, functions in SCOPE.items():
        module = module_of(path)
        globs += [f"{module}.*"] if functions is None else [f"{module}.{f}__mutmut_*" for f in functions]
    return globs


@dataclass
class ModuleScore:
    path: str
    killed: int = 0
    timeouts: int = 0
    survived: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)
    other: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + self.timeouts + len(self.survived) + len(self.untested) + len(self.other)

    @property
    def detected(self) -> int:
        return self.killed + self.timeouts

    @property
    def score(self) -> float | None:
        return self.detected / self.total if self.total else None


def scores(root: Path = Path(".")) -> list[ModuleScore]:
    results = []
    for path in SCOPE:
        score = ModuleScore(path)
        meta = root / "mutants" / f"{path}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        for mutant, code in sorted(codes.items(), key=lambda item: _natural(item[0])):
            if not in_scope(path, mutant):
                continue
            if code in KILLED:
                if KILLED[code] == "timeout":
                    score.timeouts += 1
                else:
                    score.killed += 1
            elif code in SURVIVED:
                score.survived.append(mutant)
            elif code in NO_TESTS:
                score.untested.append(mutant)
            else:  # not checked (an interrupted run), suspicious, segfault
                score.other.append((mutant, code))
        results.append(score)
    return results


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(results: list[ModuleScore]) -> str:
    lines = [
        "| module | what | mutants | killed | timeouts | survived | no tests | other | score |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r.path}` | {WHAT[r.path]} | {r.total} | {r.killed} | {r.timeouts} | {len(r.survived)} "
            f"| {len(r.untested)} | {len(r.other)} | {_percent(r.score)} |"
        )
    total = sum(r.total for r in results)
    detected = sum(r.detected for r in results)
    lines.append(
        f"| **all** | | {total} | {sum(r.killed for r in results)} | {sum(r.timeouts for r in results)} "
        f"| {sum(len(r.survived) for r in results)} | {sum(len(r.untested) for r in results)} "
        f"| {sum(len(r.other) for r in results)} | {_percent(detected / total if total else None)} |"
    )
    return "\n".join(lines)


def _diff(mutant: str, path: str) -> str:
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        return get_diff_for_mutant(mutant, path=path)
    except Exception as error:  # an old or partial mutants/ directory: the name alone still says where
        return f"(no diff: {error!r})"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def summary(results: list[ModuleScore], *, tests: list[str], seconds: float | None = None) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Mutation testing of the guarantee modules",
        "",
        f"Measured {when} at commit `{commit}`{' (with uncommitted changes)' if dirty else ''} by `make mutation` "
        f"(mutmut {_mutmut_version()}){f', in {seconds / 60:.0f} min' if seconds else ''}.",
        "A mutant is killed when a test fails (or hangs) with it; the score is killed / mutants; "
        f"the target is {TARGET:.0%} per module.",
        "",
        table(results),
        "",
        "Tests run against the mutants: " + ", ".join(f"`{t}`" for t in tests) + ".",
    ]
    for r in results:
        left = r.survived + r.untested + [m for m, _ in r.other]
        if not left:
            continue
        parts += ["", f"## {r.path}: {len(left)} not killed", ""]
        for mutant in left:
            status = "survived" if mutant in r.survived else "no tests" if mutant in r.untested else "other"
            parts += [f"### `{mutant}` ({status})", "", "```diff", _diff(mutant, r.path), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def _mutmut_version() -> str:
    try:
        from importlib.metadata import version

        return version("mutmut")
    except Exception:
        return "?"


def configured_tests() -> list[str]:
    import tomllib

    config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config.get("pytest_add_cli_args_test_selection", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("mutation-results/summary.md"))
    parser.add_argument("--seconds", type=float, default=None, help="how long the run took (for the summary)")
    args = parser.parse_args(argv)
    if not Path("mutants").is_dir():
        print("no mutants/ directory: run `make mutation` first", file=sys.stderr)
        return 2
    results = scores()
    print(table(results))
    for r in results:
        if r.survived or r.untested or r.other:
            names = [m.rpartition(".")[2] for m in r.survived + r.untested + [m for m, _ in r.other]]
            print(f"\n{r.path}: not killed: {', '.join(names)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(summary(results, tests=configured_tests(), seconds=args.seconds))
    print(f"\nwritten to {args.out}")
    below = [r.path for r in results if r.score is not None and r.score < TARGET]
    if below:
        print(f"below the {TARGET:.0%} target: {', '.join(below)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
