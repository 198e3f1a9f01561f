"""Dependencies point one way: the apps (viewer_api, pacs_gateway) use image_store and
dicom_codecs; those two never import an app, and the apps never import each other or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "image_store": {"viewer_api", "pacs_gateway", "cloudfilm"},
    "dicom_codecs": {"viewer_api", "pacs_gateway", "cloudfilm"},
    "pacs_gateway": {"viewer_api", "cloudfilm"},
    "viewer_api": {"pacs_gateway", "cloudfilm"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)
