"""The import contract: which part may import which, and no circles.

Read from the source with ``ast`` (every import, at any depth, TYPE_CHECKING ones too), so that a
new arrow against the design fails here before anyone builds on it:

- the media plane (``sfu``) never imports the control plane, the bench or the TURN tools;
- the control plane reaches the media plane through ``sfu/api.py`` only, and the app factory
  alone builds the plane (``sfu/worker.py`` with ``sfu/options.py``);
- inside ``signalling`` the parts stand in layers (``LAYERS``): each imports only the parts below
  it, so that ``core`` imports no other part, billing never imports the socket layer or the app,
  and the calls ask billing only through ``calls/billing_desk.py``;
- the bench may use the application, never its command line (which imports the bench);
- no module is part of an import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("signalling", "sfu", "turn_config", "bench", "web_demo")

# What each part of signalling may import (besides itself); a part not listed may import none.
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "backends": frozenset({"core"}),
    "auth": frozenset({"core"}),
    "experts": frozenset({"core", "auth"}),
    "bookings": frozenset({"core", "auth", "experts"}),
    "calls": frozenset({"core", "auth", "backends", "bookings"}),
    "billing": frozenset({"core", "auth", "experts", "calls"}),
    "app": frozenset({"core", "auth", "backends", "experts", "bookings", "calls", "billing"}),
}
# The media plane's modules the control plane may import, and where.
SFU_FOR_ALL = frozenset({"sfu.api"})
# the factory makes the plane: in process, a pool of worker processes, or remote SFU nodes
SFU_FOR = {
    "signalling.app.factory": frozenset({"sfu.worker", "sfu.pool", "sfu.options", "sfu.remote", "sfu.node_registry",
                                         "sfu.node_link"}),
    # an SFU node (--role sfu): the plane, served to signalling nodes
    "signalling.app.sfu_node": frozenset({"sfu.worker", "sfu.pool", "sfu.node_server", "sfu.node_registry",
                                          "sfu.node_link"}),
    # serve warns when the fixed media ports lie in the kernel's ephemeral range
    "signalling.app.cli": frozenset({"sfu.udp_mux"}),
    # the bounded cancel-and-wait both planes stop their tasks with, written once
    "signalling.core.tasks": frozenset({"sfu.tasks"}),
}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``module`` imports (a package's ``__init__`` counts as the package)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def part(module: str) -> str | None:
    """The part of signalling a module belongs to (``signalling.calls.node`` -> ``calls``)."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "signalling" and len(pieces) > 1 else None


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    assert len([m for m in graph if m.startswith("signalling.")]) > 50
    assert "signalling.calls.node" in graph["signalling.calls.websocket"]
    assert "sfu.api" in graph["signalling.calls.media_bridge"]


def test_the_media_plane_imports_only_itself(graph: dict[str, set[str]]) -> None:
    offenders = sorted(
        f"{m} -> {t}" for m, targets in graph.items() if m.startswith("sfu") for t in targets if not t.startswith("sfu")
    )
    assert offenders == []


def test_the_control_plane_uses_the_media_api_and_the_factory_only(graph: dict[str, set[str]]) -> None:
    offenders = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.startswith("signalling")
        for t in targets
        if t.startswith("sfu") and t not in SFU_FOR_ALL | SFU_FOR.get(m, frozenset())
    )
    assert offenders == []


def test_the_parts_of_signalling_import_only_the_parts_below_them(graph: dict[str, set[str]]) -> None:
    offenders = []
    for module, targets in graph.items():
        here = part(module)
        if here is None:
            continue
        for target in targets:
            there = part(target)
            if target.startswith("signalling") and there != here and there not in LAYERS.get(here, frozenset()):
                offenders.append(f"{module} -> {target}")
    assert sorted(offenders) == []


def test_billing_never_imports_the_socket_layer(graph: dict[str, set[str]]) -> None:
    billing = {m: t for m, t in graph.items() if part(m) == "billing"}
    assert billing
    assert sorted(f"{m} -> {t}" for m, ts in billing.items() for t in ts if t == "signalling.calls.websocket") == []


def test_the_bench_never_imports_the_command_line(graph: dict[str, set[str]]) -> None:
    assert sorted(m for m, ts in graph.items() if m.startswith("bench") and "signalling.app.cli" in ts) == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
