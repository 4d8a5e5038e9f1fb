"""The runbook works as written: the README's "Running against real Kafka and MongoDB" section and
deploy/PRODUCTION.md, command by command, checked against the code without running anything.

- Every `pharmacy ...` command is parsed by the real CLI (typer's click command, not invoked): in
  a shell block, after `docker compose run <service>` or `kubectl exec ... --`, or after `sh -c`,
  a command that names an unknown command or option, misses a required argument or option, or
  gives a value of the wrong type fails, quoting the line. Placeholders such as `<WAREHOUSE>` are
  accepted as any value, and files need not exist (they are the operator's). In inline code
  (`pharmacy create-topics` in a sentence), commands and options must exist; prose may leave out
  the required ones.
- Every `python -m <module>` names a module the package has, and not one of `services.ops`, which
  the image leaves out.
- Every `PHARMACY_*` variable named is read by a settings class, and every value the services
  cannot run in production without is named in both documents.
- Every `make <target>` exists, and every file of the repository a command names exists.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import SecretStr, ValidationError

from services.cli import main as cli
from services.consultation.settings import ConsultationSettings
from services.courier.settings import CourierSettings
from services.inventory.settings import InventorySettings
from services.prescription.settings import PrescriptionSettings
from services.runtime.settings import RuntimeSettings
from tests.unit import test_documented_settings

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Running against real Kafka and MongoDB"
README = f"README.md ({SECTION.removeprefix('## ')})"
PRODUCTION = "deploy/PRODUCTION.md"

#: The settings classes of the four services (the CLI reads RuntimeSettings, which they extend).
SERVICE_SETTINGS = (ConsultationSettings, PrescriptionSettings, InventorySettings, CourierSettings)

#: Settings whose defaults are made for the dev stack (its broker refuses idempotent producers and
#: answers idle fetches slowly; it has one node) and that production sets otherwise.
DEV_STACK_DEFAULTS = {
    "kafka_enable_idempotence",
    "kafka_fetch_max_wait_ms",
    "kafka_replication_factor",
    "kafka_security_protocol",
    "kafka_sasl_username",
}

#: What the production checklist must cover (issue 16): durability on both sides, dead letters,
#: access, and keys for every kind of user.
CHECKLIST = [
    "replica set",
    "PHARMACY_MONGO_WRITE_CONCERN",
    "PHARMACY_MONGO_JOURNAL",
    "PHARMACY_MONGO_READ_CONCERN",
    "PHARMACY_KAFKA_REPLICATION_FACTOR",
    "min.insync.replicas",
    "PHARMACY_KAFKA_MIN_INSYNC_REPLICAS",
    "PHARMACY_KAFKA_DEAD_LETTER_RETENTION_MS",
    "ACLs",
    "openssl rand",
    "pharmacy couriers token",
    "Pharmacists",
    "Upstream systems",
]

#: The steps a first deployment goes through, as the CLI commands that do them.
STEPS = [
    ("create-topics",),
    ("formulary", "load"),
    ("review", "load-prescribers"),
    ("review", "load-interactions"),
    ("couriers", "load"),
    ("warehouse", "register"),
    ("warehouse", "restock"),
    ("submit",),
    ("status",),
]
SERVICES = ["services.consultation", "services.prescription", "services.inventory", "services.courier"]


# --- reading the documents ----------------------------------------------------------------------


def runbook_section(readme: str) -> str:
    """From the section's heading to the next second-level heading."""
    start = readme.index(SECTION + "\n")
    end = readme.find("\n## ", start + len(SECTION))
    return readme[start : end if end != -1 else None]


def documents() -> dict[str, str]:
    return {
        README: runbook_section((ROOT / "README.md").read_text()),
        PRODUCTION: (ROOT / "deploy" / "PRODUCTION.md").read_text(),
    }


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)\s*$")
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}


def split_fenced(text: str) -> tuple[list[str], str]:
    """The logical lines of the shell blocks (continuations joined), and the text outside blocks."""
    shell: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    is_shell = False
    pending = ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, is_shell, pending = match.group(1), match.group(2).lower() in SHELL_BLOCKS, ""
            else:
                prose.append(line)
            continue
        if match and not match.group(2) and match.group(1).startswith(fence):
            fence = None
            continue
        if not is_shell:
            continue
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        shell.append(pending + stripped)
        pending = ""
    return [line for line in shell if line], "\n".join(prose)


def inline_code(prose: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose)


# --- taking shell lines apart -------------------------------------------------------------------

OPERATORS = {"&&", "||", "|", ";", "&"}
PLACEHOLDER = re.compile(r"<[^<>]+>")
REDIRECT = re.compile(r"\d*(<|>>?)(&\d*)?")
REDIRECT_WITH_TARGET = re.compile(r"\d*(<|>>?)\S+")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"(.*/)?python(3(\.\d+)?)?")


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at `&&`, `|`, ..., without redirections and
    without the environment assignments in front of them."""
    commands: list[list[str]] = [[]]
    skip_target = False
    for token in shlex.split(line, comments=True):
        if skip_target:
            skip_target = False
        elif token in OPERATORS:
            commands.append([])
        elif PLACEHOLDER.fullmatch(token):
            commands[-1].append(token)
        elif REDIRECT.fullmatch(token):
            skip_target = True
        elif not REDIRECT_WITH_TARGET.fullmatch(token):
            commands[-1].append(token)
    simple = []
    for command in commands:
        while command and ASSIGNMENT.match(command[0]):
            command = command[1:]
        if command:
            simple.append(command)
    return simple


def all_commands(line: str) -> Iterator[list[str]]:
    """Simple commands, and those of a script given to `sh -c` / `bash -c`."""
    for command in simple_commands(line):
        yield command
        for i, token in enumerate(command[:-1]):
            if token == "-c" and any(word in ("sh", "bash") for word in command[:i]):
                yield from all_commands(command[i + 1])


def pharmacy_arguments(command: list[str]) -> list[str] | None:
    """The arguments of `pharmacy` in a command: run directly, or in a container
    (`docker compose run ... <service> pharmacy ...`, `kubectl exec ... -- pharmacy ...`)."""
    for i, token in enumerate(command):
        if token != "pharmacy":
            continue
        if i == 0 or command[i - 1] == "--":
            return command[i + 1 :]
        if command[0] == "docker" and not command[i - 1].startswith("-"):
            return command[i + 1 :]
    return None


def python_modules(command: list[str]) -> list[str]:
    return [command[i + 2] for i in range(len(command) - 2) if PYTHON.fullmatch(command[i]) and command[i + 1] == "-m"]


def make_targets(command: list[str]) -> list[str]:
    if command[0] != "make":
        return []
    return [token for token in command[1:] if not token.startswith("-") and "=" not in token]


REPOSITORY_PATH = re.compile(r"(?:^|[\s\"'=]|\$PWD/)((?:services|contracts|deploy|docs|tests)/[\w./-]*\w)")


# --- the CLI, parsed but never run --------------------------------------------------------------


def lenient(command: Any) -> Any:
    """The command tree with every parameter accepting a placeholder as its value, and a path
    that does not exist here (the operator's file, a path inside a container)."""
    for param in command.params:

        def process_value(ctx: Any, value: Any, original: Any = param.process_value) -> Any:
            if isinstance(value, str) and PLACEHOLDER.fullmatch(value):
                return value
            try:
                return original(ctx, value)
            except typer.BadParameter as error:
                if error.message.endswith("does not exist."):
                    return value
                raise

        param.process_value = process_value
    for sub in getattr(command, "commands", {}).values():
        lenient(sub)
    return command


def cli_problem(args: list[str], *, whole: bool = True) -> str | None:
    """Why the CLI would refuse these arguments, or None. `whole`: a command as it is to be typed,
    so required arguments and options must be there; otherwise a command named in a sentence, whose
    commands and options must exist but may leave out what is required."""
    command = lenient(typer.main.get_command(cli.app))
    try:
        ctx = command.make_context("pharmacy", list(args))
        while hasattr(command, "commands"):
            rest = [*ctx._protected_args, *ctx.args]  # what the group left for its subcommand
            if not rest:
                if getattr(command, "invoke_without_command", False):
                    return None  # a group that does something by itself (`pharmacy warehouse transfers` lists)
                return "names a group of commands, not a command" if whole else None
            word = rest[0]
            name, sub, rest = command.resolve_command(ctx, rest)
            if sub is None:
                return f"no such command {word!r}"
            ctx = sub.make_context(name, rest, parent=ctx)
            command = sub
    except typer.Exit:  # the help, asked for or shown because a group was given no command
        return None if "--help" in args or not whole else "names a group of commands, not a command"
    except typer.TyperException as error:
        if not whole and type(error).__name__ in ("MissingParameter", "NoArgsIsHelpError"):
            return None
        if type(error).__name__ == "NoArgsIsHelpError":
            return "names a group of commands, not a command"
        return getattr(error, "format_message", lambda: "")() or f"{type(error).__name__}: {error}"
    return None


# --- what each document holds -------------------------------------------------------------------


@dataclass(frozen=True)
class Runbook:
    name: str
    text: str
    shell: list[str]
    inline: list[str]

    @classmethod
    def of(cls, name: str, text: str) -> Runbook:
        shell, prose = split_fenced(text)
        return cls(name, text, shell, inline_code(prose))

    def commands(self) -> Iterator[tuple[str, list[str]]]:
        for line in self.shell:
            for command in all_commands(line):
                yield line, command

    def inline_commands(self) -> Iterator[tuple[str, list[str]]]:
        for span in self.inline:
            try:
                words = shlex.split(span)
            except ValueError:
                continue
            if len(words) > 1:  # `pharmacy` alone names the tool
                yield span, words

    def pharmacy(self) -> list[tuple[str, list[str]]]:
        found = []
        for line, command in self.commands():
            args = pharmacy_arguments(command)
            if args is not None:
                found.append((line, args))
        return found


def runbooks() -> list[Runbook]:
    return [Runbook.of(name, text) for name, text in documents().items()]


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the CLI's parsing (options may come from variables) nor the settings classes may
    depend on the PHARMACY_* variables of the shell the tests run in."""
    for name in list(os.environ):
        if name.startswith("PHARMACY_"):
            monkeypatch.delenv(name)


@functools.cache
def read_by_the_code() -> frozenset[str]:
    """The variables some settings class reads (test_documented_settings' helper, once)."""
    return frozenset(test_documented_settings.read_by_the_code())


def needed_in_production() -> set[str]:
    """Settings that must be set on real infrastructure: those a service refuses to start without,
    secrets with no value (the CLI's signing key among them: without it `pharmacy submit` sends
    unsigned), defaults that point at loopback, and the dev stack's defaults."""
    needed: set[str] = set()
    for settings_class in SERVICE_SETTINGS:
        try:
            settings_class()
        except ValidationError as error:
            needed |= {str(detail["loc"][0]) for detail in error.errors()}
        for name, field in settings_class.model_fields.items():
            default = field.get_default(call_default_factory=True)
            value = default.get_secret_value() if isinstance(default, SecretStr) else default
            secret = "SecretStr" in repr(field.annotation)
            loopback = isinstance(value, str) and re.search(r"\b(127\.0\.0\.1|localhost)\b", value)
            if (secret and not value) or loopback:
                needed.add(name)
    return {f"PHARMACY_{name.upper()}" for name in needed | DEV_STACK_DEFAULTS}


# --- the tests ----------------------------------------------------------------------------------


def test_the_documents_are_read() -> None:
    for runbook in runbooks():
        commands = [args[:2] for _, args in runbook.pharmacy()]
        assert len(commands) >= 9, f"{runbook.name}: pharmacy commands found: {commands}"
        for step in STEPS:
            assert any(tuple(args[: len(step)]) == step for args in commands), (
                f"{runbook.name} has no `pharmacy {' '.join(step)}` step in a shell block"
            )
        modules = [module for _, command in runbook.commands() for module in python_modules(command)]
        assert modules or any("python -m services." in span for span in runbook.inline), runbook.name
        for module in SERVICES:
            assert f"python -m {module}" in runbook.text, f"{runbook.name} does not say how to start {module}"


def test_every_pharmacy_command_is_one_the_cli_takes() -> None:
    problems = [
        f"{runbook.name}: `{line}`: {problem}"
        for runbook in runbooks()
        for line, args in runbook.pharmacy()
        if (problem := cli_problem(args))
    ]
    problems += [
        f"{runbook.name}: `{span}`: {problem}"
        for runbook in runbooks()
        for span, words in runbook.inline_commands()
        if (args := pharmacy_arguments(words)) is not None and (problem := cli_problem(args, whole=False))
    ]
    assert not problems, "\n".join(problems)


def test_the_test_prescription_is_signed() -> None:
    """An unsigned prescription is quarantined: the runbook's `submit` signs as a sender that the
    runbook registers, with the signing key the CLI reads."""
    for runbook in runbooks():
        submits = [args for _, args in runbook.pharmacy() if args[:1] == ["submit"]]
        assert submits, runbook.name
        for args in submits:
            assert "--sender-id" in args, f"{runbook.name}: `pharmacy {' '.join(args)}` signs as the default sender"
        for variable in ("PHARMACY_SIGNING_KEY_ID", "PHARMACY_SIGNING_SECRET", "PHARMACY_SENDER_KEYS"):
            assert variable in runbook.text, f"{runbook.name} does not say to set {variable}"
    assert {"signing_key_id", "signing_secret"} <= set(RuntimeSettings.model_fields)


def test_every_module_run_is_in_the_package_and_the_image() -> None:
    problems = []
    for runbook in runbooks():
        named = [(line, module) for line, command in runbook.commands() for module in python_modules(command)]
        named += [(span, module) for span, words in runbook.inline_commands() for module in python_modules(words)]
        for where, module in named:
            if module.split(".")[:2] == ["services", "ops"]:
                problems.append(f"{runbook.name}: `{where}`: {module} is a development tool, not in the image")
            elif importlib.util.find_spec(module) is None:
                problems.append(f"{runbook.name}: `{where}`: no module {module}")
    assert not problems, "\n".join(problems)


def test_every_variable_named_is_read_by_the_code() -> None:
    known = read_by_the_code()
    named = {
        (runbook.name, variable)
        for runbook in runbooks()
        for variable in re.findall(r"PHARMACY_[A-Z0-9_]*[A-Z0-9]", runbook.text)
    }
    assert len(named) > 30
    unknown = sorted(
        f"{name}: {variable} is read by no settings class" for name, variable in named if variable not in known
    )
    assert not unknown, "\n".join(unknown)


def test_every_value_production_needs_is_named() -> None:
    needed = needed_in_production()
    # The derivation finds what we know the services need; a new secret joins by itself.
    assert {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVERS",
        "PHARMACY_MONGO_URL",
        "PHARMACY_SENDER_KEYS",
        "PHARMACY_DELIVERY_CODE_KEY",
        "PHARMACY_KAFKA_SASL_PASSWORD",
    } <= needed
    assert needed <= read_by_the_code(), "a setting of DEV_STACK_DEFAULTS is gone"
    missing = [
        f"{runbook.name} does not name {variable}"
        for runbook in runbooks()
        for variable in sorted(needed)
        if not re.search(rf"\b{variable}\b", runbook.text)
    ]
    assert not missing, "\n".join(missing)


def test_the_checklist_covers_durability_access_and_keys() -> None:
    text = documents()[PRODUCTION]
    missing = [item for item in CHECKLIST if item not in text]
    assert not missing, f"{PRODUCTION} does not cover {missing}"


def test_every_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, flags=re.MULTILINE))
    problems = []
    for runbook in runbooks():
        named = [(line, target) for line, command in runbook.commands() for target in make_targets(command)]
        named += [(span, target) for span, words in runbook.inline_commands() for target in make_targets(words)]
        problems += [
            f"{runbook.name}: `{where}`: no make target {target}" for where, target in named if target not in targets
        ]
    assert not problems, "\n".join(problems)


def test_every_file_a_command_names_exists() -> None:
    problems = [
        f"{runbook.name}: `{line}`: no {path}"
        for runbook in runbooks()
        for line in runbook.shell
        for path in REPOSITORY_PATH.findall(line)
        if not (ROOT / path).exists()
    ]
    assert not problems, "\n".join(problems)


# --- the checks themselves catch what they are for ----------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "pharmacy formulary lod services/ops/data/formulary.json",  # no such command
        "pharmacy warehouse restock WH D 5 --lot L --expiry 2030-01-01",  # --by missing
        "pharmacy submit x.json --sender runbook",  # no such option
        "pharmacy review approve RX-1 --pharmacist P",  # --note missing
        "pharmacy status",  # the prescription id missing
        "pharmacy create-topics now",  # an extra argument
        "pharmacy warehouse restock WH D many --lot L --expiry 2030-01-01 --by me",  # not a number
        "pharmacy warehouse",  # a group, not a command
        'docker compose run --rm --no-deps consultation pharmacy submit /x.json --sender "runbook"',
        "kubectl -n pharmacy exec -i deploy/x -- sh -c 'cat > /tmp/f.json && pharmacy formulary lod /tmp/f.json'",
    ],
)
def test_a_broken_command_is_caught(line: str) -> None:
    runbook = Runbook.of("broken", f"```sh\n{line}\n```\n")
    found = runbook.pharmacy()
    assert found, "the command was found"
    assert [problem for _, args in found if (problem := cli_problem(args))]


@pytest.mark.parametrize(
    "line",
    [
        'pharmacy warehouse restock <WAREHOUSE> <DRUG> <UNITS> --lot <LOT> --expiry <YYYY-MM-DD> --by "<your name>"',
        "PHARMACY_LOG_LEVEL=DEBUG pharmacy formulary load /nowhere/formulary.json   # a comment's 'quote",
        "docker compose run --rm -e PHARMACY_SIGNING_KEY_ID consultation pharmacy submit /x.json --sender-id r",
        "read -rs PHARMACY_SIGNING_SECRET && export PHARMACY_SIGNING_SECRET && pharmacy status RX-1 > status.txt",
    ],
)
def test_a_good_command_passes(line: str) -> None:
    found = Runbook.of("good", f"```sh\n{line}\n```\n").pharmacy()
    assert len(found) == 1
    assert cli_problem(found[0][1]) is None


def test_inline_commands_need_only_exist() -> None:
    assert cli_problem(["couriers", "token"], whole=False) is None
    assert cli_problem(["review"], whole=False) is None
    assert cli_problem(["couriers", "tokens"], whole=False) is not None
    assert cli_problem(["dlq", "list", "--topik", "x"], whole=False) is not None


def test_the_other_checks_catch_what_they_are_for() -> None:
    broken = Runbook.of(
        "broken", "```sh\npython -m services.ops.devstack\npython -m services.consultaton\nmake upp\n```\n"
    )
    commands = [command for _, command in broken.commands()]
    assert [module for command in commands for module in python_modules(command)] == [
        "services.ops.devstack",
        "services.consultaton",
    ]
    assert importlib.util.find_spec("services.consultaton") is None
    assert [target for command in commands for target in make_targets(command)] == ["upp"]
    assert REPOSITORY_PATH.findall('docker compose run -v "$PWD/services/ops/dta:/data:ro" x') == ["services/ops/dta"]


def test_every_pharmacy_command_anywhere_in_the_readmes_is_one_the_cli_takes() -> None:
    """Not only the runbook: every command the README and deploy/README.md show people is typed as
    it is shown (`make demo`'s tour, the day-to-day commands, FHIR, the board)."""
    everywhere = [
        Runbook.of("README.md", (ROOT / "README.md").read_text()),
        Runbook.of("deploy/README.md", (ROOT / "deploy" / "README.md").read_text()),
    ]
    problems = [
        f"{runbook.name}: `{line}`: {problem}"
        for runbook in everywhere
        for line, args in runbook.pharmacy()
        if (problem := cli_problem(args))
    ]
    assert not problems, "\n".join(problems)
