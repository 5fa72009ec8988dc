import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path | None:
    """The shared MD17/ISO17 fixtures: $TDN_SHARED_DATA, else shared/data beside the
    repository (where CI puts it), else None."""
    beside_repo = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    candidates = [os.environ.get("TDN_SHARED_DATA"), beside_repo]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


SHARED_DATA = shared_data_dir()
needs_shared_data = pytest.mark.skipif(
    SHARED_DATA is None, reason="shared/data fixtures not found beside the repository"
)
