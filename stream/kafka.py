"""Where the Kafka cluster is and how to log in: the one bootstrap resolver and the one place that
turns the security settings into client options; every command and the worker use both.

Order: an explicit `--broker host:port`, else `SEQSTREAM_BROKER`, else the embedded broker on
this machine (`seqstream broker start`), started on demand where the caller allows it.
"""
from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream.config import ConfigError, Settings

BROKER_ENV = "SEQSTREAM_BROKER"


def _checked(address: str, source: str) -> str:
    address = address.strip().removeprefix("kafka://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{source}={address!r} must be host:port")
    return address


def explicit_bootstrap(explicit: str | None = None) -> str:
    """The broker the user named (flag, then environment), or "" for the embedded one."""
    if explicit and explicit.strip():
        return _checked(explicit, "--broker")
    env = os.environ.get(BROKER_ENV, "")
    if env.strip():
        return _checked(env, BROKER_ENV)
    return ""


def resolve_bootstrap(explicit: str | None = None, start_embedded: bool = True,
                      timeout_s: float = 60.0) -> str:
    """host:port of the cluster to talk to. Nothing is started when a broker is named."""
    named = explicit_bootstrap(explicit)
    if named:
        return named
    # the embedded broker is optional here
    from stream.broker.embedded import EmbeddedBroker
    from stream.broker.install import BrokerError

    broker = EmbeddedBroker()
    if start_embedded:
        try:
            broker.start(timeout_s=timeout_s)
        except BrokerError as exc:  # its first line says why
            raise ConfigError(f"embedded broker: {str(exc).splitlines()[0]}") from None
    return broker.bootstrap


# -- secured clusters: the one place that turns Settings into client options ---------------------

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
SSL_PROTOCOLS = ("SSL", "SASL_SSL")
_SECRET_KEYS = ("sasl_plain_password",)
_secrets: set[str] = set()  # every password this process loaded: masked in every log record


SECURITY_FIELDS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                   "sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile")


def security_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The security fields of Settings from SEQSTREAM_* (for code that builds its own Settings)."""
    env_settings = Settings.from_env(env)
    return {f: getattr(env_settings, f) for f in SECURITY_FIELDS}


class KafkaAuthError(ConfigError):
    """The cluster refused our credentials (or TLS): one line that says which and what to check."""


def sasl_password(settings: Settings) -> str:
    """The SASL password: from --sasl-password-file / SEQSTREAM_SASL_PASSWORD_FILE, else
    SEQSTREAM_SASL_PASSWORD. One trailing line break of the file is dropped."""
    if settings.sasl_password_file:
        if settings.sasl_password:
            raise ConfigError("give the SASL password one way: SEQSTREAM_SASL_PASSWORD or "
                              "--sasl-password-file, not both")
        try:
            password = Path(settings.sasl_password_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the SASL password file {settings.sasl_password_file}: "
                              f"{exc.strerror}") from None
        password = password[:-1] if password.endswith("\n") else password
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = settings.sasl_password
    if len(password) >= 4:  # masking a shorter one would mangle every log line, not hide it
        _mask_in_logs(password)
    return password


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments (KafkaProducer, KafkaConsumer, KafkaAdminClient) for the
    cluster's security settings; {} for PLAINTEXT. Holds the password: log `redacted(...)`."""
    protocol = settings.security_protocol
    sasl = protocol in SASL_PROTOCOLS
    tls = protocol in SSL_PROTOCOLS
    if not sasl and (settings.sasl_username or settings.sasl_password or settings.sasl_password_file):
        raise ConfigError(f"a SASL username or password is set but the security protocol is {protocol}: "
                          "set --security-protocol SASL_PLAINTEXT or SASL_SSL (SEQSTREAM_SECURITY_PROTOCOL)")
    if not tls and (settings.ssl_cafile or settings.ssl_certfile or settings.ssl_keyfile):
        raise ConfigError(f"TLS files are set but the security protocol is {protocol}: "
                          "set --security-protocol SSL or SASL_SSL (SEQSTREAM_SECURITY_PROTOCOL)")
    if settings.ssl_keyfile and not settings.ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile (the client certificate)")
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        password = sasl_password(settings)
        if protocol == "SASL_PLAINTEXT" and settings.sasl_mechanism == "PLAIN":
            _quiet_clear_text_warnings()
        if not settings.sasl_username or not password:
            raise ConfigError(f"{protocol} needs a username and a password: SEQSTREAM_SASL_USERNAME "
                              "(--sasl-username) and SEQSTREAM_SASL_PASSWORD or --sasl-password-file")
        options.update(sasl_mechanism=settings.sasl_mechanism,
                       sasl_plain_username=settings.sasl_username, sasl_plain_password=password)
    if tls:
        options["ssl_check_hostname"] = True
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(settings, key):
                options[key] = str(getattr(settings, key))
    return options


def kafka_client(factory: Any, bootstrap: str, options: Mapping[str, Any] | None = None, *,
                 topics: tuple[str, ...] = (), **config: Any) -> Any:
    """factory(*topics, bootstrap_servers=bootstrap, **config, **options) (KafkaProducer,
    KafkaConsumer, KafkaAdminClient), after `check_login`: a refused login is one line, at once."""
    options = dict(options or {})
    check_login(bootstrap, options)
    return factory(*topics, bootstrap_servers=bootstrap, **{**config, **options})


def redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options fit for a log line: secrets replaced by '***'."""
    return {k: ("***" if k in _SECRET_KEYS and v else v) for k, v in options.items()}


def describe(options: Mapping[str, Any]) -> str:
    """'SASL_PLAINTEXT, PLAIN as alice' / 'PLAINTEXT': how we talk to the cluster, no secret."""
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol in SASL_PROTOCOLS:
        return f"{protocol}, {options.get('sasl_mechanism')} as {options.get('sasl_plain_username')}"
    return protocol


def ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The TLS context for faust/aiokafka from the same options (None without TLS)."""
    if options.get("security_protocol") not in SSL_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(cafile=options.get("ssl_cafile"))
        if options.get("ssl_certfile"):
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS files: {exc}") from None
    return context


def faust_credentials(settings: Settings) -> Any:
    """faust's broker_credentials for the same settings (None for PLAINTEXT)."""
    import faust

    options = kafka_client_options(settings)
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(options)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=options["sasl_plain_username"],
                                 password=options["sasl_plain_password"],
                                 mechanism=options["sasl_mechanism"], ssl_context=context)


def check_login(bootstrap: str, options: Mapping[str, Any], timeout_s: float = 15.0) -> None:
    """Fail fast, in one line, when the cluster refuses the credentials or the TLS handshake.

    kafka-python retries a refused login until its bootstrap timeout and then reports only
    "Unable to bootstrap"; faust/aiokafka log it and carry on. So before the first client, one
    connection (aiokafka's, which raises the real error) logs in to the first broker that
    answers. A broker that does not answer is left to the client's own error. Checked once per
    process for each bootstrap and credentials."""
    if options.get("security_protocol", "PLAINTEXT") == "PLAINTEXT":
        return
    key = (bootstrap, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key in _checked_logins:
        return
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no event loop in this thread
        err = asyncio.run(_try_login(bootstrap, options, timeout_s))
    else:  # called from a coroutine: log in from a short-lived thread of its own
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            err = pool.submit(asyncio.run, _try_login(bootstrap, options, timeout_s)).result()
    if err is not None:
        raise KafkaAuthError(err)
    _checked_logins.add(key)
    if options.get("security_protocol") == "SASL_PLAINTEXT" and options.get("sasl_mechanism") == "PLAIN":
        _warn_plain_once()


_checked_logins: set[tuple] = set()


async def _try_login(bootstrap: str, options: Mapping[str, Any], timeout_s: float) -> str | None:
    import asyncio

    from aiokafka import errors as aerr
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    protocol = options["security_protocol"]
    sasl = protocol in SASL_PROTOCOLS
    who = (f"for user {options.get('sasl_plain_username')} ({'SASL ' + options.get('sasl_mechanism', '')})"
           if sasl else "(TLS)")
    kwargs: dict[str, Any] = {"security_protocol": protocol, "ssl_context": ssl_context(options),
                              "request_timeout_ms": int(timeout_s * 1000)}
    if sasl:
        kwargs.update(sasl_mechanism=options["sasl_mechanism"],
                      sasl_plain_username=options["sasl_plain_username"],
                      sasl_plain_password=options["sasl_plain_password"])
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        conn = None
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **kwargs), timeout_s)
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
            return None
        except aerr.SaslAuthenticationFailed:
            return (f"authentication failed {who} at {address}: check SEQSTREAM_SASL_USERNAME "
                    "and the password (SEQSTREAM_SASL_PASSWORD or --sasl-password-file)")
        except aerr.UnsupportedSaslMechanismError:
            return (f"the broker at {address} does not enable SASL mechanism "
                    f"{options.get('sasl_mechanism')}: check --sasl-mechanism")
        except aerr.IllegalSaslStateError:
            return (f"the broker at {address} does not speak SASL on this port: check the "
                    "address and --security-protocol")
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the broker's certificate at {address} is not trusted ({exc.verify_message}): check --ssl-cafile"
        except ssl.SSLError as exc:
            return f"TLS handshake with {address} failed {who} ({exc.reason or exc}): check --ssl-* and --security-protocol"
        except (OSError, asyncio.TimeoutError, aerr.KafkaError):
            continue  # down or unreachable: the next address, then the client's own error
        finally:
            if conn is not None:
                conn.close()
    return None


_CLEAR_TEXT = "Sending username and password in the clear"


def _quiet_clear_text_warnings() -> None:
    """The clients warn on every connection that PLAIN over SASL_PLAINTEXT sends the password
    unencrypted: drop their copies (`_warn_plain_once` says it once, after a good login)."""
    global _quieted
    if not _quieted:
        _quieted = True
        for name in ("aiokafka.conn", "kafka.net.sasl.plain", "kafka.sasl.plain", "kafka.conn"):
            logging.getLogger(name).addFilter(lambda record: _CLEAR_TEXT not in record.getMessage())


def _warn_plain_once() -> None:
    global _plain_warned
    if not _plain_warned:
        _plain_warned = True
        logging.getLogger("seqstream.kafka").warning(
            "SASL PLAIN over SASL_PLAINTEXT: the password crosses the network unencrypted; use "
            "SASL_SSL outside a trusted network")


_quieted = _plain_warned = False


def _mask_in_logs(secret: str) -> None:
    """Mask `secret` in every log record from now on, whoever logs it (kafka clients included)."""
    if not _secrets:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is the logger's problem, not ours
                return record
            if any(s in message for s in _secrets):
                for s in _secrets:
                    message = message.replace(s, "***")
                record.msg, record.args = message, ()
            return record

        logging.setLogRecordFactory(factory)
    _secrets.add(secret)
