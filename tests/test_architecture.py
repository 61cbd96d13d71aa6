"""The package's layering (docs/design.md §1) holds: the import-linter contracts of pyproject.toml pass
on the tree, and fail on a copy in which a lower layer imports a higher one."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts, on the ``attn`` package found in ``package_parent``."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
         str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )


def test_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_contracts_catch_an_upward_import(tmp_path):
    shutil.copytree(ROOT / "attn", tmp_path / "attn", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    spec = tmp_path / "attn" / "core" / "spec.py"
    spec.write_text(spec.read_text() + "\nimport attn.backends.registry  # a lower layer reaching up\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "attn.core.spec -> attn.backends.registry" in result.stdout
