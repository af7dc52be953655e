"""Every test is marked by where it lives, so `-m unit`, `-m integration` and `-m faults` cover
everything; the real-broker fixtures (tests/broker_fixtures.py) are shared by integration and
fault tests."""
from pathlib import Path

import pytest

from tests.broker_fixtures import deployment, embedded_broker, kafka_bootstrap, make_topic  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "faults" in parts:
            if not item.get_closest_marker("faults_long"):
                item.add_marker(pytest.mark.faults)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)
