"""Secured clusters without a broker: Settings -> kafka-python options and faust credentials
(SASL and TLS), the password from the environment or a file, a refused login mapped to one line,
and the password kept out of repr, --help and every log record."""
from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from stream.config import ConfigError, Settings
from stream.kafka import (KafkaAuthError, check_login, describe, faust_credentials, kafka_client,
                          kafka_client_options, redacted, security_settings, ssl_context)

pytestmark = pytest.mark.unit

SECRET = "pw-" + uuid.uuid4().hex  # unique: any hit is a leak


def sasl(**kw) -> Settings:
    return Settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice", sasl_password=SECRET, **kw)


def test_plaintext_has_no_options_and_no_credentials():
    assert kafka_client_options(Settings()) == {}
    assert faust_credentials(Settings()) is None
    assert describe({}) == "PLAINTEXT"


def test_sasl_plaintext_maps_to_kafka_python_options():
    assert kafka_client_options(sasl()) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "alice", "sasl_plain_password": SECRET}
    opts = kafka_client_options(sasl(sasl_mechanism="SCRAM-SHA-512"))
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert describe(opts) == "SASL_PLAINTEXT, SCRAM-SHA-512 as alice"


def test_the_options_are_what_kafka_python_accepts():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    opts = kafka_client_options(Settings(security_protocol="SASL_SSL", sasl_username="a",
                                         sasl_password=SECRET, ssl_cafile=__file__))
    for cls in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(opts) <= set(cls.DEFAULT_CONFIG), cls


def test_tls_files_are_passed_through(tmp_path):
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    opts = kafka_client_options(Settings(security_protocol="SSL", ssl_cafile=str(ca),
                                         ssl_certfile=str(cert), ssl_keyfile=str(key)))
    assert opts == {"security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": str(ca),
                    "ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    opts = kafka_client_options(Settings(security_protocol="SASL_SSL", sasl_username="alice",
                                         sasl_password=SECRET, ssl_cafile=str(ca)))
    assert opts["security_protocol"] == "SASL_SSL" and opts["ssl_cafile"] == str(ca)
    assert opts["sasl_plain_password"] == SECRET and "ssl_certfile" not in opts


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A self-signed CA/server certificate and key (openssl), for the TLS context."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: no certificate to load")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, cert, key


def test_faust_credentials_carry_the_same_settings(tls_files):
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    creds = faust_credentials(sasl(sasl_mechanism="SCRAM-SHA-256"))
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)  # what faust hands aiokafka
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert auth["sasl_plain_username"] == "alice" and auth["sasl_plain_password"] == SECRET
    assert auth["ssl_context"] is None

    ca, cert, key = tls_files
    creds = faust_credentials(Settings(security_protocol="SASL_SSL", sasl_username="alice",
                                       sasl_password=SECRET, ssl_cafile=str(ca)))
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["ssl_context"] is not None
    creds = faust_credentials(Settings(security_protocol="SSL", ssl_cafile=str(ca),
                                       ssl_certfile=str(cert), ssl_keyfile=str(key)))
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"
    ctx = ssl_context(kafka_client_options(Settings(security_protocol="SSL", ssl_cafile=str(ca))))
    assert ctx is not None and ctx.check_hostname and ctx.get_ca_certs()
    assert SECRET not in repr(faust_credentials(sasl()))


def test_a_bad_tls_file_is_one_line(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        faust_credentials(Settings(security_protocol="SSL", ssl_cafile=str(bad)))


def test_password_from_a_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    opts = kafka_client_options(Settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice",
                                         sasl_password_file=str(f)))
    assert opts["sasl_plain_password"] == SECRET  # the trailing newline is not part of it
    with pytest.raises(ConfigError, match="one way"):
        kafka_client_options(sasl(sasl_password_file=str(f)))


@pytest.mark.parametrize("settings, match", [
    (Settings(security_protocol="SASL_PLAINTEXT", sasl_password=SECRET), "needs a username"),
    (Settings(security_protocol="SASL_SSL", sasl_username="alice"), "needs a username and a password"),
    (Settings(sasl_username="alice"), "security protocol is PLAINTEXT"),
    (Settings(security_protocol="SASL_PLAINTEXT", sasl_username="a", sasl_password="b",
              ssl_cafile=__file__), "TLS files are set"),
])
def test_inconsistent_settings_are_one_line(settings, match):
    with pytest.raises(ConfigError, match=match) as err:
        kafka_client_options(settings)
    assert "\n" not in str(err.value) and SECRET not in str(err.value)


def test_security_settings_come_from_the_environment(tmp_path):
    env = {"SEQSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "SEQSTREAM_SASL_USERNAME": "bob",
           "SEQSTREAM_SASL_PASSWORD": SECRET, "SEQSTREAM_SSL_CAFILE": __file__}
    got = security_settings(env)
    assert got["security_protocol"] == "SASL_SSL" and got["sasl_username"] == "bob"
    assert got["sasl_password"] == SECRET and got["ssl_cafile"] == __file__


def test_repr_of_settings_options_and_replayer_hide_the_password(tmp_path):
    s = sasl()
    assert SECRET not in repr(s) and SECRET not in str(s)
    opts = kafka_client_options(s)
    assert SECRET not in repr(redacted(opts)) and redacted(opts)["sasl_plain_password"] == "***"
    assert SECRET not in describe(opts)

    from stream.replay.producer import Replayer

    class Fake:
        def partitions_for(self, topic):
            return {0, 1}

    r = Replayer("fake:9092", prefix="t-", producer=Fake(), options=opts)
    assert SECRET not in repr(r)

    from stream.broker.embedded import EmbeddedBroker

    assert SECRET not in repr(EmbeddedBroker(port=19999, data_dir=tmp_path, sasl_users={"alice": SECRET}))


def test_help_never_shows_the_password(monkeypatch, capsys):
    from stream.cli.main import build_parser, main

    monkeypatch.setenv("SEQSTREAM_SASL_PASSWORD", SECRET)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert SECRET not in out
        assert "--sasl-password " not in out and "--sasl-password=" not in out  # no flag for it


def test_a_refused_login_is_one_line_and_logs_no_password(monkeypatch, caplog):
    """aiokafka's real error class, raised where the broker would refuse the login; every
    logger at DEBUG sees no password."""
    import aiokafka.conn
    from aiokafka.errors import SaslAuthenticationFailed

    async def refuse(host, port, **kwargs):
        logging.getLogger("aiokafka.conn").debug("connecting with %s", kwargs)  # a careless client
        raise SaslAuthenticationFailed("Authentication failed: Invalid username or password")

    monkeypatch.setattr(aiokafka.conn, "create_conn", refuse)
    opts = kafka_client_options(sasl())
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("seqstream").info("options %s", opts)  # even a careless caller of ours
        with pytest.raises(KafkaAuthError) as err:
            check_login("127.0.0.1:1", opts)
        with pytest.raises(KafkaAuthError):  # every client goes through the same check
            kafka_client(lambda **kw: pytest.fail("client built after a refused login"), "127.0.0.1:1", opts)
    line = str(err.value)
    assert line == ("authentication failed for user alice (SASL PLAIN) at 127.0.0.1:1: check "
                    "SEQSTREAM_SASL_USERNAME and the password (SEQSTREAM_SASL_PASSWORD or "
                    "--sasl-password-file)")
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line, exit 2
    assert caplog.records and SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert any("***" in r.getMessage() for r in caplog.records)


def test_a_broker_that_does_not_answer_is_left_to_the_client(monkeypatch):
    import aiokafka.conn

    async def down(host, port, **kwargs):
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(aiokafka.conn, "create_conn", down)
    check_login("127.0.0.1:2", kafka_client_options(sasl()))  # no error of ours: "no broker" is theirs


def test_sasl_listener_in_the_broker_config(tmp_path):
    from stream.broker.embedded import EmbeddedBroker
    from stream.broker.install import BrokerError

    b = EmbeddedBroker(port=19990, data_dir=tmp_path, sasl_users={"alice": SECRET}, sasl_port=19992)
    b._render_props(19991)
    text = b.props_file.read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:19990,CONTROLLER://127.0.0.1:19991,SASL_PLAINTEXT://127.0.0.1:19992" in text
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19990,SASL_PLAINTEXT://127.0.0.1:19992" in text
    assert f'listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="{SECRET}";' in text
    assert "inter.broker.listener.name=PLAINTEXT" in text
    assert (b.props_file.stat().st_mode & 0o777) == 0o600
    assert b.sasl_bootstrap == "127.0.0.1:19992"

    plain = EmbeddedBroker(port=19990, data_dir=tmp_path / "p")
    plain.dir.mkdir()
    plain._render_props(19991)
    text = plain.props_file.read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:19990,CONTROLLER://127.0.0.1:19991\n" in text
    assert "jaas.config" not in text and "sasl.enabled.mechanisms" not in text
    with pytest.raises(BrokerError):
        plain.sasl_bootstrap
    with pytest.raises(BrokerError, match="quotes"):
        EmbeddedBroker(port=19990, data_dir=tmp_path, sasl_users={"a": 'x"y'}, sasl_port=1)._render_props(2)
