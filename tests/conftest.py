"""Fixtures shared by the test modules."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TRAFFIC_LIGHTS = SHARED_DATA / "traffic-lights-voc" / "VOCdevkit"


@pytest.fixture
def traffic_lights_root() -> Path:
    """Path of the real traffic-light VOCdevkit, or a skip when it is not beside the checkout."""
    if not (TRAFFIC_LIGHTS / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"real data not found at {TRAFFIC_LIGHTS}; it lies in ../shared/data beside the checkout")
    return TRAFFIC_LIGHTS
