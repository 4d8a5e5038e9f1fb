"""Kafka SASL/TLS: one reading of the settings for FastStream and for plain aiokafka clients.

`faststream_security` is for `KafkaBroker(security=...)`; `aiokafka_kwargs` is for the clients this
project builds itself (`AIOKafkaAdminClient` in `create_topics`, the CLI's producer and consumer).
Given the same settings, both end in the same aiokafka configuration: FastStream turns the security
object into aiokafka keyword arguments with `faststream.kafka.security.parse_security`, and the
unit tests hold `aiokafka_kwargs` to that.

`PHARMACY_KAFKA_SECURITY_PROTOCOL` decides what is used:

- `PLAINTEXT` (default): nothing.
- `SSL`: TLS.
- `SASL_PLAINTEXT`: `PHARMACY_KAFKA_SASL_MECHANISM`, `_USERNAME` and `_PASSWORD` over an unencrypted
  connection (with `PLAIN`, the password itself crosses the network in clear text).
- `SASL_SSL`: both. TLS verifies against `PHARMACY_KAFKA_SSL_CAFILE`, or the system CAs if unset.

Settings that do not apply to the chosen protocol (credentials with `SSL`, a CA file without TLS)
are ignored. TLS always verifies the broker's certificate and host name; there is no switch to
turn that off.
"""

from __future__ import annotations

import ssl
from typing import Any

from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from .settings import RuntimeSettings

_SASL_CLASSES: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}
_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_KNOWN_PROTOCOLS = frozenset({"PLAINTEXT"}) | _TLS_PROTOCOLS | _SASL_PROTOCOLS

REDACTED = "**********"


class AiokafkaKwargs(dict[str, Any]):
    """A plain dict of aiokafka keyword arguments whose repr/str hide the SASL password.

    Only the printed form changes: `**kwargs`, lookups and equality behave like any dict. A copy
    (`dict(kwargs)`, `kwargs.copy()`) is an ordinary dict and prints everything.
    """

    def __repr__(self) -> str:
        shown = {key: REDACTED if key == "sasl_plain_password" else value for key, value in self.items()}
        return repr(shown)

    __str__ = __repr__


def faststream_security(settings: RuntimeSettings) -> BaseSecurity | None:
    """The `security=` argument of `KafkaBroker`: None for PLAINTEXT.

    Raises ValueError when SASL lacks a username or password, or the CA file cannot be loaded.
    """
    protocol = _protocol(settings)
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=_ssl_context(settings), use_ssl=True)
    username, password = _credentials(settings)
    ssl_context = _ssl_context(settings) if protocol in _TLS_PROTOCOLS else None
    return _SASL_CLASSES[settings.kafka_sasl_mechanism](
        username=username,
        password=password,
        ssl_context=ssl_context,
        use_ssl=ssl_context is not None,
    )


def aiokafka_kwargs(settings: RuntimeSettings) -> dict[str, Any]:
    """Security keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

    Only the arguments that apply to the protocol are present; `{"security_protocol": "PLAINTEXT"}`
    for plaintext. The result prints with the password masked (see `AiokafkaKwargs`).

    Raises ValueError when SASL lacks a username or password, or the CA file cannot be loaded.
    """
    protocol = _protocol(settings)
    kwargs = AiokafkaKwargs(security_protocol=protocol)
    if protocol in _SASL_PROTOCOLS:
        username, password = _credentials(settings)
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    if protocol in _TLS_PROTOCOLS:
        kwargs["ssl_context"] = _ssl_context(settings)
    return kwargs


def _protocol(settings: RuntimeSettings) -> str:
    protocol = settings.kafka_security_protocol
    if protocol not in _KNOWN_PROTOCOLS:  # the settings' Literal already refuses these
        raise ValueError(f"PHARMACY_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {sorted(_KNOWN_PROTOCOLS)}")
    if protocol in _SASL_PROTOCOLS and settings.kafka_sasl_mechanism not in _SASL_CLASSES:
        raise ValueError(
            f"PHARMACY_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} is not one of {sorted(_SASL_CLASSES)}"
        )
    return protocol


def _credentials(settings: RuntimeSettings) -> tuple[str, str]:
    username = settings.kafka_sasl_username
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    if not username or not password:
        missing = [
            name
            for name, value in (("PHARMACY_KAFKA_SASL_USERNAME", username), ("PHARMACY_KAFKA_SASL_PASSWORD", password))
            if not value
        ]
        raise ValueError(
            f"PHARMACY_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} "
            f"(mechanism {settings.kafka_sasl_mechanism}) needs a username and a password; "
            f"unset or empty: {', '.join(missing)}"
        )
    return username, password


def _ssl_context(settings: RuntimeSettings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name against the CA file, or the system CAs if unset."""
    cafile = settings.kafka_ssl_cafile or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as error:  # missing or unreadable file; ssl.SSLError (no PEM certificates in it) is an OSError
        raise ValueError(f"PHARMACY_KAFKA_SSL_CAFILE={cafile!r}: cannot load the CA bundle: {error}") from error
