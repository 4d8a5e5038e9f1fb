"""The Kubernetes manifests in deploy/k8s: valid for the Kubernetes API (offline, with
`kubernetes-validate`), consistent with each other, with docker-compose.yml and with the settings
the services read."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings
from pymongo import uri_parser

from services.consultation.settings import ConsultationSettings
from services.courier.settings import CourierSettings
from services.inventory.settings import InventorySettings
from services.ops import asyncapi
from services.prescription.settings import PrescriptionSettings
from services.runtime.security import aiokafka_kwargs
from services.runtime.settings import RuntimeSettings
from tests.unit.test_security import TEST_CA_PEM

#: The oldest Kubernetes release the manifests must work on (still supported by the major clouds).
K8S_VERSION = "1.30"
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SERVICES: dict[str, type[RuntimeSettings]] = {
    "consultation": ConsultationSettings,
    "prescription": PrescriptionSettings,
    "inventory": InventorySettings,
    "courier": CourierSettings,
}
#: Under deploy/k8s but never applied: `kubectl apply -k` would overwrite the real Secret with it.
TEMPLATES = {"secret.example.yaml"}
PLACEHOLDER = "REPLACE_ME"
#: After the drain (PHARMACY_SHUTDOWN_GRACE_S) a service still commits, flushes its outbox and
#: closes its clients before Kubernetes may kill it.
AFTER_DRAIN_S = 10
ENV_PREFIX = "PHARMACY_"
#: The Secrets holding the CA certificates (key ca.crt) of the Kafka brokers and of MongoDB.
KAFKA_CA = "kafka-ca"
MONGO_CA = "mongo-ca"
#: The highest peak RSS of a service measured under a burst of 3,000 prescriptions (README, benchmark).
MEASURED_PEAK_RSS_BYTES = 145 * 10**6
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}

Manifest = dict[str, Any]


def load_manifests() -> dict[str, list[Manifest]]:
    """Every YAML document under deploy/k8s but the kustomization, by path relative to it."""
    return {
        path.relative_to(K8S).as_posix(): [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])
        if path.name not in ("kustomization.yaml", "kustomization.yml")
    }


MANIFESTS = load_manifests()


def every_object() -> Iterator[tuple[str, Manifest]]:
    for name, docs in MANIFESTS.items():
        for doc in docs:
            yield name, doc


def the(kind: str, name: str | None = None) -> Manifest:
    found = [doc for _, doc in every_object() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


#: Compose interpolation: ${NAME}, ${NAME:-default} or ${NAME:?error}.
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<rest>[^}]*))?\}")
#: Stand-ins for what `.env` must provide, in the shape the settings expect.
COMPOSE_DOT_ENV = {"PHARMACY_SENDER_KEYS": '{"hospital": {"k1": "secret"}}'}


def compose_environment(service: str) -> dict[str, str]:
    """A compose service's environment as its container gets it, `.env` filled with stand-ins."""

    def interpolate(match: re.Match[str]) -> str:
        if match["op"] == "-":
            return match["rest"]
        return COMPOSE_DOT_ENV.get(match["name"], "placeholder")

    environment = compose()["services"][service]["environment"]
    return {name: COMPOSE_VARIABLE.sub(interpolate, str(value)) for name, value in environment.items()}


def schema_error(doc: Manifest) -> str | None:
    """Why the Kubernetes API would refuse `doc`, or None. Strict: unknown fields are errors too."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(str(part) for part in error.path) or '<root>'}: {error.message}"
    return None


def setting_names() -> set[str]:
    """Every environment variable some service reads (pydantic-settings matches case-insensitively)."""
    fields: set[str] = set()
    for settings_class in (RuntimeSettings, *SERVICES.values()):
        fields |= set(settings_class.model_fields)
    return {f"{ENV_PREFIX}{field}".upper() for field in fields}


def unknown_settings(names: set[str]) -> set[str]:
    return {name for name in names if name.upper() not in setting_names()}


def main_container(deployment: Manifest) -> Manifest:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def all_containers(deployment: Manifest) -> list[Manifest]:
    pod = deployment["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def http_problems(deployment: Manifest, service: Manifest, config: Manifest) -> list[str]:
    """The probes, the Service, Prometheus' annotations and PHARMACY_HTTP_PORT must name one port."""
    container = main_container(deployment)
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}

    def container_port(port: int | str) -> int | None:
        return ports.get(port) if isinstance(port, str) else port

    (exposed,) = service["spec"]["ports"]
    target = container_port(exposed.get("targetPort", exposed["port"]))
    problems = []
    if target not in ports.values():
        problems.append(f"the Service targets port {exposed.get('targetPort')}, which the container does not open")
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"no {probe} with httpGet")
            continue
        if container_port(get["port"]) != target:
            problems.append(f"{probe} asks port {get['port']}, the Service exposes {target}")
        if get["path"] != path:
            problems.append(f"{probe} asks {get['path']}, the service answers {path}")
    if int(config["data"].get(f"{ENV_PREFIX}HTTP_PORT", 8080)) != target:
        problems.append(f"the service listens on PHARMACY_HTTP_PORT, not on the Service's port {target}")
    annotations = service["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(target):
        problems.append(f"Prometheus is not told to scrape port {target}")
    if service["spec"]["selector"] != deployment["spec"]["template"]["metadata"]["labels"]:
        problems.append("the Service does not select the Deployment's pods")
    return problems


def environment(container: Manifest, config: Manifest, secret: Manifest) -> dict[str, str]:
    """What the container's process finds in its environment (the Secret's values: placeholders)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == config["metadata"]["name"]
        env.update(config["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], f"{variable['name']} comes from an unknown Secret"
        assert ref["key"] in secret["stringData"], f"the Secret has no {ref['key']}"
        env[variable["name"]] = secret["stringData"][ref["key"]]
    return env


def mounted_files(deployment: Manifest, container: Manifest) -> dict[str, tuple[str, bool]]:
    """The files a container finds mounted read-only from a Secret or ConfigMap's listed keys: path
    -> (the Secret's or ConfigMap's name, whether the pod starts without it)."""
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"].get("volumes", [])}
    files: dict[str, tuple[str, bool]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap")
        if source is None or not mount.get("readOnly"):
            continue
        name = source.get("secretName") or source.get("name")
        for item in source.get("items", []):
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (name, bool(source.get("optional")))
    return files


def ca_problems(deployment: Manifest, config: Manifest, secret: Manifest) -> list[str]:
    """Every container that talks to Kafka over TLS finds the CA file PHARMACY_KAFKA_SSL_CAFILE names
    (required: without it no broker's certificate verifies); the service finds the file the MongoDB
    URL's tlsCAFile names."""
    problems = []
    for container in all_containers(deployment):
        name = container["name"]
        cafile = environment(container, config, secret).get(f"{ENV_PREFIX}KAFKA_SSL_CAFILE")
        if cafile is None:
            problems.append(f"{name}: PHARMACY_KAFKA_SSL_CAFILE is not set")
        elif mounted_files(deployment, container).get(cafile) != (KAFKA_CA, False):
            problems.append(f"{name}: {cafile} is not mounted read-only from the required Secret {KAFKA_CA}")
    container = main_container(deployment)
    url = environment(container, config, secret)[f"{ENV_PREFIX}MONGO_URL"]
    tls_cafile = uri_parser.parse_uri(url, validate=False)["options"].get("tlsCAFile")
    if tls_cafile is None:
        problems.append("the MongoDB URL names no tlsCAFile")
    elif mounted_files(deployment, container).get(tls_cafile, ("",))[0] != MONGO_CA:
        problems.append(f"{container['name']}: {tls_cafile} is not mounted read-only from the Secret {MONGO_CA}")
    return problems


def with_mounted_ca(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """`env` with the Kafka CA file where this machine has one (a test CA), as the pod has it mounted."""
    cafile = tmp_path / "ca.crt"
    cafile.write_text(TEST_CA_PEM)
    return {**env, f"{ENV_PREFIX}KAFKA_SSL_CAFILE": str(cafile)}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("384Mi", "400M", "1Gi") in bytes."""
    match = re.fullmatch(r"(\d+)([KMG]i?|k)?", quantity)
    assert match is not None, f"not a memory quantity: {quantity}"
    return int(match[1]) * MEMORY_UNITS.get(match[2] or "", 1)


def settings_in(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], settings_class: type[BaseSettings]) -> Any:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings_class()


# --- the Kubernetes API schema ------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}") for name, doc in every_object()],
)
def test_every_manifest_is_valid_for_the_kubernetes_api(doc: Manifest) -> None:
    assert schema_error(doc) is None, schema_error(doc)


def _rename_readiness_probe(docs: dict[str, Manifest]) -> None:
    container = main_container(docs["deployment"])
    container["readinesProbe"] = container.pop("readinessProbe")


def _port_as_text(docs: dict[str, Manifest]) -> None:
    main_container(docs["deployment"])["ports"][0]["containerPort"] = "8080"


def _drop_selector(docs: dict[str, Manifest]) -> None:
    del docs["deployment"]["spec"]["selector"]


def _probe_without_port(docs: dict[str, Manifest]) -> None:
    del main_container(docs["deployment"])["livenessProbe"]["httpGet"]["port"]


def _unquoted_boolean(docs: dict[str, Manifest]) -> None:
    docs["config"]["data"]["PHARMACY_KAFKA_ENABLE_IDEMPOTENCE"] = True


def _service_port_as_list(docs: dict[str, Manifest]) -> None:
    docs["service"]["spec"]["ports"] = docs["service"]["spec"]["ports"][0]


@pytest.mark.parametrize(
    ("break_it", "refusal"),
    [
        (_rename_readiness_probe, "'readinesProbe' was unexpected"),
        (_port_as_text, "containerPort: '8080' is not of type 'integer'"),
        (_drop_selector, "'selector' is a required property"),
        (_probe_without_port, "livenessProbe.httpGet: 'port' is a required property"),
        (_unquoted_boolean, "PHARMACY_KAFKA_ENABLE_IDEMPOTENCE: True is not of type 'string'"),
        (_service_port_as_list, "spec.ports: {"),
    ],
)
def test_a_broken_manifest_is_refused(break_it: Callable[[dict[str, Manifest]], None], refusal: str) -> None:
    docs = {
        "deployment": copy.deepcopy(the("Deployment", "consultation")),
        "service": copy.deepcopy(the("Service", "consultation")),
        "config": copy.deepcopy(the("ConfigMap")),
    }
    assert [schema_error(doc) for doc in docs.values()] == [None, None, None]
    break_it(docs)
    errors = [error for error in map(schema_error, docs.values()) if error is not None]
    assert len(errors) == 1
    assert refusal in errors[0]


def test_kustomization_applies_every_manifest_but_the_templates() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(MANIFESTS) - TEMPLATES
    assert {doc["metadata"].get("namespace") for _, doc in every_object() if doc["kind"] != "Namespace"} == {
        kustomization["namespace"]
    }
    assert the("Namespace")["metadata"]["name"] == kustomization["namespace"]


# --- the services, their image and their ports --------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_its_module_from_the_shared_image_as_compose_does(name: str) -> None:
    container = main_container(the("Deployment", name))
    command = container["command"]
    assert command == ["python", "-m", f"services.{name}"]
    assert importlib.util.find_spec(f"services.{name}.__main__") is not None
    assert compose()["services"][name]["command"] == command


@pytest.mark.parametrize("name", SERVICES)
def test_compose_gives_each_service_valid_settings_and_a_readiness_healthcheck(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    env = compose_environment(name)
    assert unknown_settings(set(env)) == set()
    settings = settings_in(monkeypatch, env, SERVICES[name])
    aiokafka_kwargs(settings)
    if name in ("consultation", "courier"):
        assert settings.delivery_code_secret()
    assert "/health/ready" in " ".join(compose()["services"][name]["healthcheck"]["test"])


def test_every_container_runs_the_image_compose_builds() -> None:
    images = {
        container["image"]
        for _, doc in every_object()
        if doc["kind"] == "Deployment"
        for container in all_containers(doc)
    }
    assert images == {compose()["x-app"]["image"]}
    assert {doc["metadata"]["name"] for _, doc in every_object() if doc["kind"] == "Deployment"} == set(SERVICES)


def test_the_init_container_runs_a_command_the_image_installs() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in SERVICES:
        (init,) = the("Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert init["command"][0] in scripts
        assert init["command"] == compose()["services"]["topics"]["command"]


@pytest.mark.parametrize("name", SERVICES)
def test_probes_prometheus_and_the_service_use_one_port(name: str) -> None:
    assert http_problems(the("Deployment", name), the("Service", name), the("ConfigMap")) == []


def _probe_elsewhere(docs: dict[str, Manifest]) -> None:
    main_container(docs["deployment"])["readinessProbe"]["httpGet"]["port"] = 9090


def _liveness_on_readiness(docs: dict[str, Manifest]) -> None:
    main_container(docs["deployment"])["livenessProbe"]["httpGet"]["path"] = "/health/ready"


def _no_liveness(docs: dict[str, Manifest]) -> None:
    del main_container(docs["deployment"])["livenessProbe"]


def _other_http_port(docs: dict[str, Manifest]) -> None:
    docs["config"]["data"]["PHARMACY_HTTP_PORT"] = "9000"


def _scrape_elsewhere(docs: dict[str, Manifest]) -> None:
    docs["service"]["metadata"]["annotations"]["prometheus.io/port"] = "9102"


@pytest.mark.parametrize(
    "break_it", [_probe_elsewhere, _liveness_on_readiness, _no_liveness, _other_http_port, _scrape_elsewhere]
)
def test_a_port_mismatch_is_found(break_it: Callable[[dict[str, Manifest]], None]) -> None:
    docs = {
        "deployment": copy.deepcopy(the("Deployment", "inventory")),
        "service": copy.deepcopy(the("Service", "inventory")),
        "config": copy.deepcopy(the("ConfigMap")),
    }
    break_it(docs)
    assert http_problems(docs["deployment"], docs["service"], docs["config"]) != []


# --- settings -----------------------------------------------------------------------------------


def test_every_variable_the_manifests_set_is_a_setting() -> None:
    names = set(the("ConfigMap")["data"]) | set(the("Secret")["stringData"])
    for _, doc in every_object():
        if doc["kind"] == "Deployment":
            names |= {variable["name"] for container in all_containers(doc) for variable in container.get("env", [])}
    assert unknown_settings(names) == set()


def test_a_misspelt_variable_is_found() -> None:
    assert unknown_settings({"PHARMACY_KAFKA_BOOTSTRAP_SERVER", "pharmacy_mongo_url"}) == {
        "PHARMACY_KAFKA_BOOTSTRAP_SERVER"
    }


@pytest.mark.parametrize("name", SERVICES)
def test_each_deployment_environment_gives_its_service_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    deployment = the("Deployment", name)
    env = with_mounted_ca(environment(main_container(deployment), the("ConfigMap"), the("Secret")), tmp_path)
    settings = settings_in(monkeypatch, env, SERVICES[name])  # raises on a missing or malformed value
    aiokafka_kwargs(settings)  # raises when SASL lacks its user or password
    if name in ("consultation", "courier"):
        assert settings.delivery_code_secret()
    if name == "consultation":
        assert settings.sender_keys
    assert settings.mongo_url.get_secret_value().startswith("mongodb://")

    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    init_env = with_mounted_ca(environment(init, the("ConfigMap"), the("Secret")), tmp_path)
    aiokafka_kwargs(settings_in(monkeypatch, init_env, RuntimeSettings))


@pytest.mark.parametrize("name", SERVICES)
def test_kubernetes_waits_for_the_drain(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    settings = settings_in(monkeypatch, dict(the("ConfigMap")["data"]), RuntimeSettings)
    grace = the("Deployment", name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_grace_s + AFTER_DRAIN_S


def test_the_secret_template_holds_placeholders_only() -> None:
    secret = the("Secret")
    assert [name for name, docs in MANIFESTS.items() if secret in docs] == ["secret.example.yaml"]
    assert all(PLACEHOLDER in value for value in secret["stringData"].values())


@pytest.mark.parametrize("name", list(SERVICES))
def test_start_up_lasts_until_the_service_is_ready_and_an_unready_pod_never_blocks_a_drain(name: str) -> None:
    """`/health/live` answers as soon as the process does, before MongoDB, the indexes and the
    consumer groups: a startup probe on it would hand the pod to liveness too early. A budget that
    counts unready pods as disrupted would block every node drain while the service is down."""
    container = main_container(the("Deployment", name))
    assert container["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert the("PodDisruptionBudget", name)["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- certificates and memory ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_every_container_finds_the_ca_files_its_settings_name(name: str) -> None:
    """The ConfigMap's bootstrap is a TLS listener: a container without the brokers' CA cannot
    verify them and crash-loops. The init container creates topics, so it needs the CA too."""
    assert the("ConfigMap")["data"][f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL"].endswith("SSL")
    assert ca_problems(the("Deployment", name), the("ConfigMap"), the("Secret")) == []


def _init_without_the_ca(docs: dict[str, Manifest]) -> None:
    (init,) = docs["deployment"]["spec"]["template"]["spec"]["initContainers"]
    del init["volumeMounts"]


def _ca_mounted_writable(docs: dict[str, Manifest]) -> None:
    for mount in main_container(docs["deployment"])["volumeMounts"]:
        mount.pop("readOnly", None)


def _ca_path_elsewhere(docs: dict[str, Manifest]) -> None:
    docs["config"]["data"]["PHARMACY_KAFKA_SSL_CAFILE"] = "/etc/ssl/kafka/ca.crt"


def _no_ca_setting(docs: dict[str, Manifest]) -> None:
    del docs["config"]["data"]["PHARMACY_KAFKA_SSL_CAFILE"]


def _kafka_ca_optional(docs: dict[str, Manifest]) -> None:
    for volume in docs["deployment"]["spec"]["template"]["spec"]["volumes"]:
        if volume.get("secret", {}).get("secretName") == KAFKA_CA:
            volume["secret"]["optional"] = True


def _mongo_url_without_ca(docs: dict[str, Manifest]) -> None:
    url = docs["secret"]["stringData"]["PHARMACY_MONGO_URL"]
    docs["secret"]["stringData"]["PHARMACY_MONGO_URL"] = url.split("&tlsCAFile=")[0]


def _no_mongo_ca_volume(docs: dict[str, Manifest]) -> None:
    pod = docs["deployment"]["spec"]["template"]["spec"]
    pod["volumes"] = [volume for volume in pod["volumes"] if volume["name"] != MONGO_CA]
    container = main_container(docs["deployment"])
    container["volumeMounts"] = [mount for mount in container["volumeMounts"] if mount["name"] != MONGO_CA]


@pytest.mark.parametrize(
    "break_it",
    [
        _init_without_the_ca,
        _ca_mounted_writable,
        _ca_path_elsewhere,
        _no_ca_setting,
        _kafka_ca_optional,
        _mongo_url_without_ca,
        _no_mongo_ca_volume,
    ],
)
def test_a_ca_file_not_mounted_where_the_settings_look_is_found(
    break_it: Callable[[dict[str, Manifest]], None],
) -> None:
    docs = {
        "deployment": copy.deepcopy(the("Deployment", "courier")),
        "config": copy.deepcopy(the("ConfigMap")),
        "secret": copy.deepcopy(the("Secret")),
    }
    break_it(docs)
    assert ca_problems(docs["deployment"], docs["config"], docs["secret"]) != []


@pytest.mark.parametrize("name", SERVICES)
def test_what_the_fetch_caps_let_a_pod_buffer_fits_under_its_memory_limit(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """aiokafka fetches a partition again only once its buffered records are handed over, so a pod
    holding every partition of every topic it consumes buffers at most that many times
    PHARMACY_KAFKA_MAX_PARTITION_FETCH_BYTES. With the measured peak it must fit the limit, with
    room for three times the partitions (scaling out adds partitions)."""
    config = the("ConfigMap")["data"]
    assert {f"{ENV_PREFIX}KAFKA_MAX_PARTITION_FETCH_BYTES", f"{ENV_PREFIX}KAFKA_FETCH_MAX_BYTES"} <= set(config)
    settings = settings_in(monkeypatch, dict(config), RuntimeSettings)
    assert settings.kafka_fetch_max_bytes >= settings.kafka_max_partition_fetch_bytes
    topics_consumed = sum(len(subscriber.topics) for subscriber in asyncapi.build_app(name).broker.subscribers)
    buffered = topics_consumed * settings.kafka_topic_partitions * settings.kafka_max_partition_fetch_bytes
    limit = memory_bytes(main_container(the("Deployment", name))["resources"]["limits"]["memory"])
    assert MEASURED_PEAK_RSS_BYTES + 3 * buffered <= limit
