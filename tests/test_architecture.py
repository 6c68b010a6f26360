"""The house rules that no linter checks: small files and functions, and an architecture document
that names every part of the package and nothing that is not there.

(The layers are import-linter's contracts in pyproject.toml; the types are mypy's, both in `make test`.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gpuroam"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_source_file_is_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}, f"split these files (at most {MAX_FILE_LINES} lines): {long}"


def test_no_function_is_over_80_lines() -> None:
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}, f"split these functions (at most {MAX_FUNCTION_LINES} lines): {long}"


def test_the_architecture_document_names_every_package_and_top_level_module() -> None:
    text = ARCHITECTURE.read_text()
    missing = [part for part in package_parts() if f"`{part}`" not in text]
    assert missing == [], f"docs/architecture.md does not describe: {missing}"


def test_every_source_path_the_architecture_document_names_exists() -> None:
    named = set(re.findall(r"`(gpuroam/[\w/.]+)`", ARCHITECTURE.read_text()))
    gone = sorted(name for name in named if not (PACKAGE.parent / name.rstrip("/")).exists())
    assert gone == [], f"docs/architecture.md names paths that are not in src/: {gone}"


def package_parts() -> list[str]:
    """Every top-level module (`gpuroam/x.py`) and every package at any depth (`gpuroam/x/y/`)."""
    modules = [
        f"gpuroam/{p.name}" for p in sorted(PACKAGE.glob("*.py")) if p.name not in ("__init__.py", "__main__.py")
    ]
    packages = [f"gpuroam/{p.parent.relative_to(PACKAGE)}/" for p in sorted(PACKAGE.rglob("__init__.py"))]
    return modules + [p for p in packages if p != "gpuroam/./"]
