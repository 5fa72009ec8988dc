"""Cross-package properties: every package imports, and dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "tdn_core": "tdn-core",
    "tdn_data": "tdn-data",
    "tdn_models": "tdn-models",
    "tdn_cli": "tdn-cli",
}
# DESIGN.md section 2: cli -> models -> core; models -> data; cli -> data
ALLOWED = {
    "tdn_core": set(),
    "tdn_data": set(),
    "tdn_models": {"tdn_core", "tdn_data"},
    "tdn_cli": {"tdn_core", "tdn_data", "tdn_models"},
}


def imported_project_packages(module_dir: Path) -> set[str]:
    found = set()
    for path in module_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("module", PACKAGES)
def test_dependencies_point_one_way(module):
    src = ROOT / "packages" / PACKAGES[module] / "src" / module
    assert imported_project_packages(src) - {module} <= ALLOWED[module]


@pytest.mark.parametrize("module", PACKAGES)
def test_package_imports_and_has_a_version(module):
    mod = __import__(module)
    assert mod.__version__ == "0.1.0"
