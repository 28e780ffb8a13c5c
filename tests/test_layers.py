"""The layers stay one-way (README, "Code layout"): above repofs/repository.py
nothing imports drivers/ or reaches a repository's driver; its storage is
touched only through the facade, on the repository's own threads."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "repofs"
# Below the facade, or the facade itself.
BELOW = ("drivers", "qemu", "repository.py")


def modules_above() -> list[Path]:
    return [
        path for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in BELOW
    ]  # fmt: skip


def test_nothing_above_the_facade_imports_a_driver():
    found = []
    for path in modules_above():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "repofs.drivers" or n.startswith("repofs.drivers.") for n in names):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"imports of repofs.drivers above repository.py: {found}"


def test_nothing_above_the_facade_reaches_a_driver():
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in modules_above()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "driver"
    ]
    assert not found, f"uses of a repository's driver above repository.py: {found}"
