"""Kafka SASL/TLS settings (`services.runtime.security`): the exact TLS switch FastStream gets, and
error messages that name exactly what is wrong. (tests/unit/test_security.py holds the rest.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from services.runtime.security import aiokafka_kwargs, faststream_security
from services.runtime.settings import RuntimeSettings


@pytest.fixture(autouse=True)
def _no_pharmacy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in [n for n in os.environ if n.startswith("PHARMACY_")]:
        monkeypatch.delenv(name)
    yield


def sasl(protocol: str, username: str | None = "svc", password: str | None = "pw") -> RuntimeSettings:
    return RuntimeSettings(
        kafka_security_protocol=protocol,  # type: ignore[arg-type]
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=username,
        kafka_sasl_password=SecretStr(password) if password is not None else None,
    )


@pytest.mark.parametrize(("protocol", "tls"), [("SSL", True), ("SASL_SSL", True), ("SASL_PLAINTEXT", False)])
def test_faststream_is_told_exactly_whether_to_use_tls(protocol: str, tls: bool) -> None:
    security = faststream_security(sasl(protocol))
    assert security is not None
    assert security.use_ssl is tls
    assert (security.ssl_context is not None) is tls


def test_missing_credentials_are_named_exactly() -> None:
    with pytest.raises(ValueError) as raised:
        aiokafka_kwargs(sasl("SASL_SSL", username=None, password=None))
    assert str(raised.value) == (
        "PHARMACY_KAFKA_SECURITY_PROTOCOL=SASL_SSL (mechanism SCRAM-SHA-512) needs a username and a password; "
        "unset or empty: PHARMACY_KAFKA_SASL_USERNAME, PHARMACY_KAFKA_SASL_PASSWORD"
    )


def test_a_protocol_the_settings_would_refuse_is_refused_here_too() -> None:
    settings = RuntimeSettings.model_construct(kafka_security_protocol="KERBEROS")
    for build in (faststream_security, aiokafka_kwargs):
        with pytest.raises(ValueError) as raised:
            build(settings)
        assert str(raised.value) == (
            "PHARMACY_KAFKA_SECURITY_PROTOCOL='KERBEROS' is not one of "
            "['PLAINTEXT', 'SASL_PLAINTEXT', 'SASL_SSL', 'SSL']"
        )


def test_an_unknown_sasl_mechanism_is_refused_only_where_sasl_is_used() -> None:
    with pytest.raises(ValueError) as raised:
        aiokafka_kwargs(
            RuntimeSettings.model_construct(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI")
        )
    assert str(raised.value) == (
        "PHARMACY_KAFKA_SASL_MECHANISM='GSSAPI' is not one of ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']"
    )
    plain = RuntimeSettings.model_construct(kafka_security_protocol="PLAINTEXT", kafka_sasl_mechanism="GSSAPI")
    assert aiokafka_kwargs(plain) == {"security_protocol": "PLAINTEXT"}
    assert faststream_security(plain) is None
