"""The conformance suite runs on the lab of the integration tier: its `dirac_lab` fixture, shared."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "integration_conftest", Path(__file__).resolve().parent.parent / "integration" / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

dirac_lab = _integration.dirac_lab
_dirac_lab_restore = _integration._dirac_lab_restore


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs the real DIRAC lab (tests/lab/lab.sh; root, ip netns)")

