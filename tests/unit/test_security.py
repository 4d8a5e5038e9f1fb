"""Kafka SASL/TLS settings: FastStream's security object and plain aiokafka kwargs agree."""

from __future__ import annotations

import inspect
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import SecretStr

from services.runtime.security import aiokafka_kwargs, faststream_security
from services.runtime.settings import RuntimeSettings

USERNAME = "pharmacy"
PASSWORD = "s3cretPassw0rdThatMustNotLeak"

# A throwaway self-signed CA (public certificate only; its key was discarded), CN=pharmacy-test-ca.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIUKSEwYIeHC0AhufF6A2pfgTlIP4MwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQcGhhcm1hY3ktdGVzdC1jYTAgFw0yNjExMjUyMTE5NDBaGA8y
MTI2MTEwMTIxMTk0MFowGzEZMBcGA1UEAwwQcGhhcm1hY3ktdGVzdC1jYTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABAu4BzC7VzLU8O+HupQVIyZbi51I1OWgDWN3
RRJwcnr9rNwQa5t1Wvq4yJH6GzlKLHGZxOCbr5U2eGHqkQDh8U+jUzBRMB0GA1Ud
DgQWBBQ3k7on6sZDy4WqL2Ty4a5WdDzpHjAfBgNVHSMEGDAWgBQ3k7on6sZDy4Wq
L2Ty4a5WdDzpHjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIHyj
lAb173DY1T6ERHQTA3M5X88VyW7xgLkOLbbcqxejAiEAv51zO+RE8SAwPSh92a44
m0B3c6ZeXQiuHtfXSrIB8MI=
-----END CERTIFICATE-----
"""

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SASL_PROTOCOLS = ["SASL_PLAINTEXT", "SASL_SSL"]
SASL_CLASSES = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}

# Every protocol/mechanism combination; the mechanism means nothing without SASL.
COMBINATIONS = [("PLAINTEXT", "SCRAM-SHA-512"), ("SSL", "SCRAM-SHA-512")] + [
    (protocol, mechanism) for protocol in SASL_PROTOCOLS for mechanism in MECHANISMS
]

SECURITY_KEYS = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")


@pytest.fixture(autouse=True)
def _no_pharmacy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the caller's shell (PHARMACY_KAFKA_SSL_CAFILE, ...) must not leak in."""
    for name in list(os.environ):
        if name.upper().startswith("PHARMACY_"):
            monkeypatch.delenv(name)


def make_settings(
    protocol: str = "PLAINTEXT",
    mechanism: str = "SCRAM-SHA-512",
    *,
    username: str | None = USERNAME,
    password: str | None = PASSWORD,
    cafile: str | None = None,
) -> RuntimeSettings:
    return RuntimeSettings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=username,
        kafka_sasl_password=None if password is None else SecretStr(password),
        kafka_ssl_cafile=cafile,
    )


@pytest.fixture
def cafile(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text(TEST_CA_PEM)
    return str(path)


def describe_ssl(context: ssl.SSLContext | None) -> Any:
    """What matters of an SSLContext, so two built from the same settings compare equal."""
    if context is None:
        return None
    return (
        type(context),
        context.protocol,
        context.verify_mode,
        context.check_hostname,
        context.minimum_version,
        context.options,
        context.get_ca_certs(),
    )


AIOKAFKA_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(AIOKafkaProducer.__init__).parameters.items()
    if name in SECURITY_KEYS
}


def effective(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The security configuration aiokafka ends up with: its defaults, overridden by `kwargs`."""
    merged = {**AIOKAFKA_DEFAULTS, **{key: value for key, value in kwargs.items() if key in SECURITY_KEYS}}
    merged["ssl_context"] = describe_ssl(merged["ssl_context"])
    return merged


def test_aiokafka_defaults_are_what_plaintext_relies_on() -> None:
    assert AIOKAFKA_DEFAULTS == {
        "security_protocol": "PLAINTEXT",
        "ssl_context": None,
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": None,
        "sasl_plain_password": None,
    }


# --- each protocol ----------------------------------------------------------------------------


def test_plaintext() -> None:
    settings = make_settings("PLAINTEXT", cafile="/nonexistent/ca.pem")  # a CA file is ignored without TLS

    assert faststream_security(settings) is None
    assert aiokafka_kwargs(settings) == {"security_protocol": "PLAINTEXT"}


def test_plaintext_is_the_default() -> None:
    settings = RuntimeSettings()

    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert faststream_security(settings) is None
    assert aiokafka_kwargs(settings) == {"security_protocol": "PLAINTEXT"}


def test_plaintext_needs_no_credentials() -> None:
    settings = make_settings("PLAINTEXT", username=None, password=None)

    assert faststream_security(settings) is None
    assert aiokafka_kwargs(settings) == {"security_protocol": "PLAINTEXT"}


def test_ssl_uses_tls_without_sasl() -> None:
    settings = make_settings("SSL")  # the credentials are ignored

    security = faststream_security(settings)
    assert type(security) is BaseSecurity
    assert security.use_ssl is True
    assert isinstance(security.ssl_context, ssl.SSLContext)

    kwargs = aiokafka_kwargs(settings)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_ssl_needs_no_credentials() -> None:
    settings = make_settings("SSL", username=None, password=None)

    assert faststream_security(settings) is not None
    assert aiokafka_kwargs(settings)["security_protocol"] == "SSL"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_plaintext(mechanism: str) -> None:
    settings = make_settings("SASL_PLAINTEXT", mechanism, cafile="/nonexistent/ca.pem")  # no TLS: CA file ignored

    security = faststream_security(settings)
    assert type(security) is SASL_CLASSES[mechanism]
    assert (security.username, security.password) == (USERNAME, PASSWORD)
    assert security.use_ssl is False
    assert security.ssl_context is None

    assert aiokafka_kwargs(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": USERNAME,
        "sasl_plain_password": PASSWORD,
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_ssl(mechanism: str) -> None:
    settings = make_settings("SASL_SSL", mechanism)

    security = faststream_security(settings)
    assert type(security) is SASL_CLASSES[mechanism]
    assert (security.username, security.password) == (USERNAME, PASSWORD)
    assert security.use_ssl is True
    assert isinstance(security.ssl_context, ssl.SSLContext)

    kwargs = aiokafka_kwargs(settings)
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": USERNAME,
        "sasl_plain_password": PASSWORD,
    }


def test_settings_come_from_the_pharmacy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable names docker-compose.yml and deploy/README.md use."""
    monkeypatch.setenv("PHARMACY_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PHARMACY_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("PHARMACY_KAFKA_SASL_USERNAME", USERNAME)
    monkeypatch.setenv("PHARMACY_KAFKA_SASL_PASSWORD", PASSWORD)

    assert aiokafka_kwargs(RuntimeSettings()) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": USERNAME,
        "sasl_plain_password": PASSWORD,
    }


# --- TLS verification ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_verifies_against_the_system_cas_by_default(protocol: str) -> None:
    settings = make_settings(protocol)

    for context in (faststream_security(settings).ssl_context, aiokafka_kwargs(settings)["ssl_context"]):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_trusts_exactly_the_configured_ca_file(protocol: str, cafile: str) -> None:
    settings = make_settings(protocol, cafile=cafile)

    for context in (faststream_security(settings).ssl_context, aiokafka_kwargs(settings)["ssl_context"]):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        subjects = [cert["subject"] for cert in context.get_ca_certs()]
        assert subjects == [((("commonName", "pharmacy-test-ca"),),)]


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_unusable_ca_file_is_a_clear_error(protocol: str, content: str | None, tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    settings = make_settings(protocol, cafile=str(path))

    for build in (faststream_security, aiokafka_kwargs):
        with pytest.raises(ValueError, match="PHARMACY_KAFKA_SSL_CAFILE") as raised:
            build(settings)
        assert str(path) in str(raised.value)


# --- missing credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", SASL_PROTOCOLS)
@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(
    ("username", "password", "missing"),
    [
        (None, PASSWORD, ["PHARMACY_KAFKA_SASL_USERNAME"]),
        (USERNAME, None, ["PHARMACY_KAFKA_SASL_PASSWORD"]),
        (None, None, ["PHARMACY_KAFKA_SASL_USERNAME", "PHARMACY_KAFKA_SASL_PASSWORD"]),
        ("", PASSWORD, ["PHARMACY_KAFKA_SASL_USERNAME"]),
        (USERNAME, "", ["PHARMACY_KAFKA_SASL_PASSWORD"]),
    ],
    ids=["no-username", "no-password", "neither", "empty-username", "empty-password"],
)
def test_sasl_without_credentials_is_a_clear_error(
    protocol: str, mechanism: str, username: str | None, password: str | None, missing: list[str]
) -> None:
    settings = make_settings(protocol, mechanism, username=username, password=password)

    for build in (faststream_security, aiokafka_kwargs):
        with pytest.raises(ValueError, match=protocol) as raised:
            build(settings)
        message = str(raised.value)
        assert all(name in message for name in missing), message
        assert PASSWORD not in message


# --- FastStream and plain aiokafka agree ------------------------------------------------------


@pytest.mark.parametrize(("protocol", "mechanism"), COMBINATIONS)
def test_aiokafka_kwargs_match_faststreams_own_translation(protocol: str, mechanism: str, cafile: str) -> None:
    """`parse_security` is how KafkaBroker turns `security=` into aiokafka arguments."""
    settings = make_settings(protocol, mechanism, cafile=cafile)

    from_faststream = parse_security(faststream_security(settings))
    ours = aiokafka_kwargs(settings)

    assert effective(ours) == effective(from_faststream)
    assert effective(ours)["security_protocol"] == protocol
    # Nothing beyond the security arguments, and nothing that would only repeat an aiokafka default.
    assert set(ours) <= set(SECURITY_KEYS)
    assert all(value is not None for value in ours.values())


@pytest.mark.parametrize(("protocol", "mechanism"), COMBINATIONS)
async def test_the_broker_and_plain_clients_configure_aiokafka_alike(protocol: str, mechanism: str) -> None:
    """What aiokafka itself stores, once from KafkaBroker's arguments and once from ours.

    Constructing the clients also runs aiokafka's own checks (e.g. `ssl_context` is mandatory for
    SSL, PLAIN needs a username and password). Nothing connects.
    """
    settings = make_settings(protocol, mechanism)
    broker = KafkaBroker("kafka:29092", security=faststream_security(settings))
    broker_kwargs = {key: broker._connection_kwargs[key] for key in SECURITY_KEYS if key in broker._connection_kwargs}

    def stored(client: AIOKafkaClient) -> dict[str, Any]:
        return effective({key: getattr(client, f"_{key}") for key in SECURITY_KEYS})

    via_broker = AIOKafkaClient(bootstrap_servers="kafka:29092", **broker_kwargs)
    via_ours = AIOKafkaClient(bootstrap_servers="kafka:29092", **aiokafka_kwargs(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers="kafka:29092", **aiokafka_kwargs(settings))

    assert stored(via_ours) == stored(via_broker)
    assert stored(admin._client) == stored(via_broker)
    assert stored(via_ours)["security_protocol"] == protocol


# --- secrets stay out of printed forms ------------------------------------------------------------


def test_settings_repr_hides_the_password() -> None:
    settings = make_settings("SASL_SSL", "SCRAM-SHA-512")

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in repr(settings.kafka_sasl_password)


@pytest.mark.parametrize(("protocol", "mechanism"), COMBINATIONS)
def test_returned_objects_print_without_the_password(protocol: str, mechanism: str) -> None:
    settings = make_settings(protocol, mechanism)
    security = faststream_security(settings)
    kwargs = aiokafka_kwargs(settings)

    for printed in (repr(security), str(security), repr(kwargs), str(kwargs), f"{kwargs}", f"{kwargs!r}"):
        assert PASSWORD not in printed, printed


def test_kwargs_print_masked_but_still_carry_the_password() -> None:
    kwargs = aiokafka_kwargs(make_settings("SASL_PLAINTEXT", "PLAIN"))

    assert "sasl_plain_password" in repr(kwargs)
    assert "**********" in repr(kwargs)
    assert USERNAME in repr(kwargs)
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert dict(**kwargs)["sasl_plain_password"] == PASSWORD  # unpacking, as `AIOKafkaProducer(**kwargs)` does
