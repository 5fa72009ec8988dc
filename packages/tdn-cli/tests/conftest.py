import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture
def tdn_script() -> str:
    """The installed ``tdn`` console script: on PATH, or beside this interpreter (a venv
    whose bin/ is not on PATH, as when CI runs .venv/bin/python -m pytest)."""
    beside = Path(sys.executable).parent / "tdn"
    script = shutil.which("tdn") or (str(beside) if beside.exists() else None)
    if script is None:
        pytest.skip("the tdn script is not installed")
    return script
