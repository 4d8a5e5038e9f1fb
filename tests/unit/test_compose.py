"""docker-compose.yml's security and durability, checked by reading it (there is no Docker engine
here): every Kafka client listener authenticates, every published port is on the loopback interface,
MongoDB is a replica set with a key file whose healthcheck waits for a primary, the services
connect as their own MongoDB user rather than root, and deploy/compose.env.example names every
variable compose requires.

Each check returns what is wrong, so the tests can show it on the real file (nothing) and on
copies broken the way the file used to be (issue 16): the EXTERNAL listener without SASL, the
services on MongoDB's root user, a standalone mongod with a ping healthcheck."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
SERVICES = ("consultation", "prescription", "inventory", "courier")
ROOT_USER_VARIABLES = ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD")
#: The containers that may know MongoDB's root credentials: the server and the one-shot init step.
ROOT_HOLDERS = {"mongo", "mongo-init"}

#: Compose interpolation: ${NAME}, ${NAME:-default} or ${NAME:?error} (also without the colon);
#: not `$${NAME}`, which compose leaves to the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>\w+)(?::?(?P<op>[-?])[^}]*)?\}")

Compose = dict[str, Any]


def load(text: str) -> Compose:
    return yaml.safe_load(text)


def listener_protocols(kafka_env: dict[str, str]) -> dict[str, str]:
    pairs = (item.split(":", 1) for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    return {name.strip(): protocol.strip() for name, protocol in pairs}


def listener_ports(kafka_env: dict[str, str]) -> dict[str, str]:
    """Listener name -> the port it listens on, from KAFKA_LISTENERS (`NAME://host:port`)."""
    return {
        item.split("://", 1)[0].strip(): item.rsplit(":", 1)[1].strip()
        for item in kafka_env["KAFKA_LISTENERS"].split(",")
    }


def container_port(published: Any) -> str:
    if isinstance(published, dict):
        return str(published["target"])
    return str(published).rsplit(":", 1)[1].split("/")[0]


# --- the checks: each returns the problems it finds -----------------------------------------------


def unauthenticated_listeners(compose: Compose) -> list[str]:
    """Kafka listeners other than the KRaft controller's that let a client in without SASL, SASL
    listeners without a JAAS configuration of their own, and a published controller port."""
    env = compose["services"]["kafka"]["environment"]
    controllers = {name.strip() for name in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")}
    protocols = listener_protocols(env)
    problems = []
    for name in listener_ports(env):
        protocol = protocols.get(name, name)  # an unmapped listener's name is its protocol
        if name in controllers:
            continue
        if not protocol.startswith("SASL_"):
            problems.append(f"listener {name} is {protocol}: clients reach it without authentication")
        elif "user_" not in env.get(f"KAFKA_LISTENER_NAME_{name}_PLAIN_SASL_JAAS_CONFIG", ""):
            problems.append(
                f"listener {name} declares no PLAIN users (KAFKA_LISTENER_NAME_{name}_PLAIN_SASL_JAAS_CONFIG)"
            )
    published = {container_port(p) for p in compose["services"]["kafka"].get("ports", [])}
    problems += [
        f"the controller listener {name} is published"
        for name, port in listener_ports(env).items()
        if name in controllers and port in published
    ]
    return problems


def publicly_published_ports(compose: Compose) -> list[str]:
    """Published ports not bound to the host's 127.0.0.1, and services on the host's network."""
    problems = []
    for name, service in compose["services"].items():
        if service.get("network_mode") == "host":
            problems.append(f"{name} uses the host's network: every port it opens is public")
        for published in service.get("ports", []):
            if isinstance(published, dict):
                host_ip = published.get("host_ip")
            else:
                parts = str(published).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            if host_ip != "127.0.0.1":
                problems.append(f"{name} publishes {published!r} beyond 127.0.0.1")
    return problems


def argument(command: list[str], option: str) -> str | None:
    """The value of `option` in an exec-form command (`--opt value` or `--opt=value`), else None."""
    for index, item in enumerate(command):
        if item == option and index + 1 < len(command):
            return command[index + 1]
        if item.startswith(f"{option}="):
            return item.split("=", 1)[1]
    return None


def mongo_replica_set_problems(compose: Compose) -> list[str]:
    """mongod must run a replica set with a key file (required with authentication), the key file
    in a tmpfs written at start by deploy/compose's entrypoint (so never committed)."""
    mongo = compose["services"]["mongo"]
    command = mongo.get("command") or []
    if isinstance(command, str):
        return [f"mongo's command is a string, not a list: {command!r}"]
    problems = []
    if argument(command, "--replSet") is None:
        problems.append("mongod runs without --replSet: majority write and read concerns mean nothing")
    key_file = argument(command, "--keyFile")
    if key_file is None:
        problems.append("mongod runs without --keyFile: a replica set with authentication needs one")
    elif not any(key_file.startswith(f"{mount.split(':')[0].rstrip('/')}/") for mount in mongo.get("tmpfs", [])):
        problems.append(f"the key file {key_file} is not in a tmpfs of the mongo container")
    entrypoint = " ".join(mongo.get("entrypoint") or [])
    mounted = {str(volume).split(":")[1]: str(volume).split(":")[0] for volume in mongo.get("volumes", [])}
    script = next((source for target, source in mounted.items() if target in entrypoint.split()), None)
    if script is None or not (ROOT / script).is_file():
        problems.append(f"mongo's entrypoint {entrypoint!r} is not a script mounted from the repository")
    return problems


def mongo_url(compose: Compose) -> str:
    return compose["x-service-env"]["PHARMACY_MONGO_URL"]


def root_mongo_user_problems(compose: Compose) -> list[str]:
    """The services' URL must name a user other than root, on the replica set mongod runs; root's
    credentials go to the mongo container and the init step only."""
    url = mongo_url(compose)
    problems = []
    masked = VARIABLE.sub(lambda m: f"<{m['name']}>", url)  # a ${...:?message} may hold ':' and '@'
    userinfo = re.match(r"mongodb://(?P<user>[^:@]*):(?P<password>[^@]*)@", masked)
    if userinfo is None:
        problems.append(f"PHARMACY_MONGO_URL has no user and password: {url}")
    else:
        for part in ("user", "password"):
            if set(re.findall(r"<(\w+)>", userinfo[part])) & set(ROOT_USER_VARIABLES):
                problems.append(f"PHARMACY_MONGO_URL's {part} is MongoDB's root {part}: {userinfo[part]}")
    replica_set = argument(compose["services"]["mongo"].get("command") or [], "--replSet")
    if f"replicaSet={replica_set}" not in url or replica_set is None:
        problems.append(f"PHARMACY_MONGO_URL does not name the replica set mongod runs ({replica_set}): {url}")
    for name, service in compose["services"].items():
        if name in ROOT_HOLDERS:
            continue
        leaked = [v for v in ROOT_USER_VARIABLES if v in yaml.safe_dump(service.get("environment", {}))]
        if leaked:
            problems.append(f"{name} is given MongoDB's root credentials ({', '.join(leaked)})")
    return problems


def mongo_healthcheck_problems(compose: Compose) -> list[str]:
    """The healthcheck must initiate the set (member `mongo:27017`, the name the services use) and
    pass only while a PRIMARY exists; the services must wait for the user the init step creates."""
    test = compose["services"]["mongo"].get("healthcheck", {}).get("test", [])
    script = " ".join(test) if isinstance(test, list) else str(test)
    replica_set = argument(compose["services"]["mongo"].get("command") or [], "--replSet")
    problems = []
    if "PRIMARY" not in script:
        problems.append("mongo's healthcheck does not check for a PRIMARY")
    if "rs.initiate" not in script or f'"{replica_set}"' not in script or '"mongo:27017"' not in script:
        problems.append(f"mongo's healthcheck does not initiate the replica set {replica_set} on mongo:27017")
    init = compose["services"].get("mongo-init", {})
    if init.get("depends_on", {}).get("mongo", {}).get("condition") != "service_healthy":
        problems.append("mongo-init does not wait for a primary (mongo healthy)")
    for name in SERVICES:
        waits = compose["services"][name].get("depends_on", {}).get("mongo-init", {}).get("condition")
        if waits != "service_completed_successfully":
            problems.append(f"{name} does not wait for mongo-init to create its user")
    return problems


def kafka_healthcheck_problems(compose: Compose) -> list[str]:
    """The broker's healthcheck must log in: a client properties file with SASL settings."""
    test = compose["services"]["kafka"].get("healthcheck", {}).get("test", [])
    script = " ".join(test) if isinstance(test, list) else str(test)
    problems = []
    if "--command-config" not in script:
        problems.append("kafka's healthcheck passes no --command-config: it cannot log in")
    if "security.protocol=SASL_" not in script or "sasl.jaas.config=" not in script:
        problems.append("kafka's healthcheck writes no SASL client configuration")
    return problems


def example_values(example: str) -> dict[str, str]:
    """The variables deploy/compose.env.example sets (uncommented `NAME=value` lines)."""
    return dict(line.split("=", 1) for line in example.splitlines() if re.match(r"^[A-Z][A-Z0-9_]*=", line))


def undocumented_variables(compose_text: str, example: str) -> list[str]:
    """Variables compose requires (`${NAME:?...}`) that the example does not set (empty is fine:
    the user fills it in), and optional ones (`${NAME:-default}`) it does not mention at all."""
    values = example_values(example)
    problems = []
    for match in VARIABLE.finditer(compose_text):
        name = match["name"]
        if match["op"] == "?" and name not in values:
            problems.append(f"{name} is required by docker-compose.yml but not set in compose.env.example")
        elif name not in example:
            problems.append(f"{name} is used by docker-compose.yml but compose.env.example never mentions it")
    return sorted(set(problems))


def committed_secrets(example: str) -> list[str]:
    """Passwords and keys in the example must be empty placeholders."""
    return [
        f"{name} has a value in compose.env.example"
        for name, value in example_values(example).items()
        if re.search(r"(PASSWORD|_KEY|_KEYS)$", name) and value.strip()
    ]


# --- the real files ---------------------------------------------------------------------------------


def real() -> tuple[str, str]:
    return COMPOSE.read_text(), ENV_EXAMPLE.read_text()


def test_every_kafka_client_listener_requires_sasl() -> None:
    compose = load(real()[0])
    assert unauthenticated_listeners(compose) == []
    protocols = listener_protocols(compose["services"]["kafka"]["environment"])
    assert protocols["EXTERNAL"] == "SASL_PLAINTEXT", "the host's listener authenticates"


def test_the_kafka_healthcheck_logs_in() -> None:
    assert kafka_healthcheck_problems(load(real()[0])) == []


def test_every_published_port_is_on_the_loopback_interface() -> None:
    compose = load(real()[0])
    assert publicly_published_ports(compose) == []
    assert any(service.get("ports") for service in compose["services"].values()), "the ports were read"


def test_mongo_runs_a_replica_set_with_a_key_file() -> None:
    assert mongo_replica_set_problems(load(real()[0])) == []


def test_the_services_connect_as_their_own_mongo_user_on_the_replica_set() -> None:
    compose = load(real()[0])
    assert root_mongo_user_problems(compose) == []
    for name in SERVICES:
        assert compose["services"][name]["environment"]["PHARMACY_MONGO_URL"] == mongo_url(compose)


def test_the_mongo_healthcheck_waits_for_a_primary() -> None:
    assert mongo_healthcheck_problems(load(real()[0])) == []


def test_the_env_example_names_every_variable_and_holds_no_secret() -> None:
    compose_text, example = real()
    assert undocumented_variables(compose_text, example) == []
    assert committed_secrets(example) == []
    assert len({m["name"] for m in VARIABLE.finditer(compose_text) if m["op"] == "?"}) >= 8, "the file was read"


def mounted_scripts(compose: Compose) -> list[Path]:
    """The repository files the mongo containers mount (`./path:target:ro`)."""
    return [
        ROOT / str(volume).split(":")[0]
        for name in sorted(ROOT_HOLDERS)
        for volume in compose["services"][name].get("volumes", [])
        if str(volume).startswith("./")
    ]


def test_the_scripts_the_mongo_containers_mount_are_under_deploy_compose_and_parse() -> None:
    scripts = mounted_scripts(load(real()[0]))
    assert sorted(path.name for path in scripts) == ["mongo-entrypoint.sh", "mongo-init.js"]
    for path in scripts:
        assert path.is_relative_to(ROOT / "deploy" / "compose") and path.is_file()
    shell = [path for path in scripts if path.suffix == ".sh"]
    subprocess.run(["bash", "-n", *map(str, shell)], check=True)


@pytest.mark.skipif(shutil.which("node") is None, reason="node checks the JavaScript's syntax")
def test_the_mongo_javascript_parses(tmp_path: Path) -> None:
    """mongosh runs the init script and the healthcheck's --eval; node reads the same syntax."""
    compose = load(real()[0])
    healthcheck = tmp_path / "healthcheck.js"
    healthcheck.write_text(compose["services"]["mongo"]["healthcheck"]["test"][-1])
    for path in [healthcheck, *(p for p in mounted_scripts(compose) if p.suffix == ".js")]:
        subprocess.run(["node", "--check", str(path)], check=True)


# --- copies broken the way the file used to be --------------------------------------------------

#: (what breaks, old text, new text, the check that must object). The old texts are in today's
#: file; the new ones are what docker-compose.yml had before issue 16.
BREAKAGES = [
    (
        "EXTERNAL without SASL",
        "EXTERNAL:SASL_PLAINTEXT,",
        "EXTERNAL:PLAINTEXT,",
        unauthenticated_listeners,
    ),
    (
        "a port on every interface",
        '"127.0.0.1:27017:27017"',
        '"27017:27017"',
        publicly_published_ports,
    ),
    (
        "a healthcheck without credentials",
        "--command-config /tmp/healthcheck-client.properties",
        "",
        kafka_healthcheck_problems,
    ),
    (
        "a standalone mongod",
        '"--replSet", "rs0", ',
        "",
        mongo_replica_set_problems,
    ),
    (
        "a replica set without a key file",
        ', "--keyFile", "/run/mongo-keyfile/key"',
        "",
        mongo_replica_set_problems,
    ),
    (
        "the services on MongoDB's root user",
        "${MONGO_APP_USERNAME:-pharmacy}:${MONGO_APP_PASSWORD:?",
        "${MONGO_INITDB_ROOT_USERNAME:?set it}:${MONGO_INITDB_ROOT_PASSWORD:?",
        root_mongo_user_problems,
    ),
    (
        "a URL without the replica set",
        "/?replicaSet=rs0&authSource=admin",
        "/?authSource=admin",
        root_mongo_user_problems,
    ),
    (
        "a ping healthcheck",
        'if (!rs.status().members.some((m) => m.stateStr === "PRIMARY")) { quit(1); }',
        "db.adminCommand('ping').ok",
        mongo_healthcheck_problems,
    ),
]


def broken_copies() -> Iterator[Any]:
    for label, old, new, check in BREAKAGES:
        yield pytest.param(old, new, check, id=label)


@pytest.mark.parametrize(("old", "new", "check"), list(broken_copies()))
def test_a_copy_broken_as_before_is_caught(old: str, new: str, check: Any) -> None:
    compose_text = real()[0]
    assert compose_text.count(old) == 1, "the breakage applies to today's file"
    assert check(load(compose_text)) == []
    assert check(load(compose_text.replace(old, new))) != []


def test_the_mongo_healthcheck_of_before_is_caught() -> None:
    compose = load(real()[0])
    compose["services"]["mongo"]["healthcheck"]["test"] = [
        "CMD-SHELL",
        'mongosh --quiet --username "$${MONGO_INITDB_ROOT_USERNAME}" --eval "db.adminCommand(\'ping\').ok"',
    ]
    assert mongo_healthcheck_problems(compose) != []


def test_services_that_skip_the_init_step_are_caught() -> None:
    compose = load(real()[0])
    inventory = compose["services"]["inventory"]  # its depends_on is shared with the others (YAML anchor)
    inventory["depends_on"] = {name: v for name, v in inventory["depends_on"].items() if name != "mongo-init"}
    assert mongo_healthcheck_problems(compose) == ["inventory does not wait for mongo-init to create its user"]


def test_root_credentials_given_to_a_service_are_caught() -> None:
    compose = load(real()[0])
    compose["services"]["courier"]["environment"]["EXTRA"] = "${MONGO_INITDB_ROOT_PASSWORD:?x}"
    assert root_mongo_user_problems(compose) == [
        "courier is given MongoDB's root credentials (MONGO_INITDB_ROOT_PASSWORD)"
    ]


def test_a_required_variable_missing_from_the_example_is_caught() -> None:
    compose_text, example = real()
    assert "\nMONGO_APP_PASSWORD=\n" in example
    assert undocumented_variables(compose_text, example.replace("\nMONGO_APP_PASSWORD=\n", "\n")) == [
        "MONGO_APP_PASSWORD is required by docker-compose.yml but not set in compose.env.example"
    ]


def test_a_secret_in_the_example_is_caught() -> None:
    example = real()[1].replace("\nKAFKA_HOST_SASL_PASSWORD=\n", "\nKAFKA_HOST_SASL_PASSWORD=hunter2\n")
    assert committed_secrets(example) == ["KAFKA_HOST_SASL_PASSWORD has a value in compose.env.example"]
