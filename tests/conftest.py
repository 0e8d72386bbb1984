import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LUCCHI = SHARED / "data" / "lucchi"


@pytest.fixture
def lucchi():
    """Path of the Lucchi data folder; skips only when ../shared is absent."""
    if not LUCCHI.exists():
        pytest.skip("../shared/data/lucchi is not present (only on project machines and CI)")
    return LUCCHI
