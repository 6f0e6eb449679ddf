"""The API reaches the host only through ``node_agent.facade`` (DESIGN §8): no module of
``cluster/api`` imports a driver, storage, network or image module, nor the agent or
the node itself, and none calls the agent's private ``_spec_of``. (import-linter will
state this as a contract; until then this test reads the imports with ``ast``.)"""

from __future__ import annotations

import ast
from pathlib import Path

import cluster.api

FORBIDDEN = ("node_agent.drivers", "node_agent.storage", "node_agent.network",
             "node_agent.images", "node_agent.agent", "node_agent.node",
             "node_agent.capacity")


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def test_the_api_imports_no_host_module_but_the_facade() -> None:
    root = Path(cluster.api.__file__).parent
    offending = {f"{path.relative_to(root)}: {name}"
                 for path in root.rglob("*.py") for name in _imports(path)
                 if name.startswith(FORBIDDEN)}
    assert not offending, sorted(offending)


def test_no_handler_reaches_past_the_facade() -> None:
    root = Path(cluster.api.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        for needle in ("ctx.node", "ctx.agent", "_spec_of", "vm_driver", "driver_for"):
            assert needle not in text, f"{path.relative_to(root)} uses {needle}"
