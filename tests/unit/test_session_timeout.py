"""The session timeout bounds recovery after a crash (stream/worker/app.py, RELIABILITY.md)."""
import pytest

from stream.config import ConfigError, Settings
from stream.worker.app import create_app

pytestmark = pytest.mark.unit


def test_the_session_timeout_sets_faust_s_session_and_heartbeat(tmp_path):
    settings = Settings(session_timeout_s=12.0, data_dir=tmp_path).validate()
    conf = create_app(settings, "127.0.0.1:9092", partitions=2).app.conf
    assert conf.broker_session_timeout == 12.0
    assert conf.broker_heartbeat_interval == pytest.approx(1.2)


@pytest.mark.parametrize("bad", [5.9, 301.0])
def test_a_session_timeout_the_broker_would_refuse_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="session timeout must be 6..300 s"):
        Settings(session_timeout_s=bad).validate()


def test_the_environment_sets_it():
    assert Settings.from_env({"SEQSTREAM_SESSION_TIMEOUT_S": "20"}).session_timeout_s == 20.0
