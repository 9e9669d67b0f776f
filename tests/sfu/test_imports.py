"""The media plane stays apart from the control plane: nothing in sfu/ imports signalling/ (the
SFU will run as separate worker processes that know nothing of users, tokens or money)."""

from __future__ import annotations

import ast
from pathlib import Path

SFU = Path(__file__).resolve().parents[2] / "sfu"


def test_sfu_never_imports_signalling() -> None:
    offenders = []
    for path in sorted(SFU.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "signalling"]
    assert len(list(SFU.rglob("*.py"))) >= 10
    assert offenders == []
