"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and catch a breach.

Each case copies the source tree to a temporary directory, writes one forbidden import into
one module, runs ``lint-imports`` there and expects it to fail, naming the broken contract.
A function-local import is caught too (grimp reads every import statement), so hiding a
cycle inside a function no longer passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("corral_cli", "cluster", "node_agent", "scheduler", "simulator", "corral_shared",
            "devtools")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``tree`` (its pyproject.toml and packages), never the checkout."""
    assert LINT_IMPORTS.exists(), "import-linter is a test dependency: pip install -e '.[test]'"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources and the contracts (Python files only)."""
    tree = tmp_path_factory.mktemp("pristine")
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    return tree


@pytest.fixture
def tree(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(pristine, copy)
    return copy


def add_import(tree: Path, module: str, line: str, *, local: bool = False) -> None:
    """Append ``line`` to ``module`` at top level, or inside a function (``local``)."""
    path = tree / module
    text = path.read_text()
    if local:
        text += f"\n\ndef _dodging_a_cycle() -> None:\n    {line}  # noqa\n"
    else:
        text += f"\n{line}  # noqa\n"
    path.write_text(text)


def test_the_tree_keeps_every_contract(pristine: Path) -> None:
    result = lint_imports(pristine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


BREACHES = [
    # (contract name as lint-imports prints it, module, forbidden import, function-local)
    ("scheduler is a leaf", "scheduler/keys.py", "from cluster.state import model", False),
    ("scheduler is a leaf", "scheduler/pipeline.py", "import simulator.index", False),
    ("scheduler is a leaf", "scheduler/view.py", "from cluster.state import reservations",
     True),
    ("corral_shared is the shared vocabulary", "corral_shared/units.py",
     "from scheduler import keys", False),
    ("node_agent never imports the API", "node_agent/paths.py",
     "from cluster.api import response", False),
    ("Nothing imports the CLI", "cluster/state/model.py", "from corral_cli import format",
     True),
    ("cluster.api reaches the host only through node_agent.facade", "cluster/api/views.py",
     "from node_agent.drivers import base", False),
    ("The layers: CLI > daemon > API", "cluster/state/placement.py",
     "from cluster.controllers import runtime", True),
    ("The product never imports the dev-cluster tooling", "cluster/daemon.py",
     "from devtools import harness", True),
    ("The layers: CLI > daemon > API", "cluster/transport/peers.py",
     "from cluster.membership import joining", False),
    ("Membership, transport, controllers and state never import the API",
     "cluster/membership/raft_role.py", "from cluster.api.context import Context", True),
    ("The CLI is only a client of the API", "corral_cli/remote_config.py",
     "from cluster.transport import peers", True),
    ("cluster.state imports nothing of the host", "cluster/state/validate.py",
     "from node_agent import paths", False),
    ("Membership, transport, controllers and state never import the API",
     "cluster/transport/peers.py", "from cluster.api import response", False),
    ("The CLI is only a client of the API", "corral_cli/format.py",
     "from cluster.state import model", True),
]


@pytest.mark.parametrize(("contract", "module", "line", "local"), BREACHES,
                         ids=[f"{b[1]}:{b[2]}" for b in BREACHES])
def test_a_forbidden_import_breaks_its_contract(tree: Path, contract: str, module: str,
                                                line: str, local: bool) -> None:
    add_import(tree, module, line, local=local)
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.partition("Broken contracts")[2]
    assert contract in broken, result.stdout
    assert module.removesuffix(".py").replace("/", ".") in broken, result.stdout


def test_an_ignored_import_that_is_gone_must_leave_the_config(tree: Path) -> None:
    """An ``ignore_imports`` line naming an import that does not exist (one a package has
    removed) fails the check, so the list of known breaches only shrinks."""
    config = tree / "pyproject.toml"
    text = config.read_text()
    anchor = 'id = "state-not-host"'
    assert anchor in text
    stale = '"cluster.state.model -> cluster.api.context"'
    config.write_text(text.replace(anchor, f"{anchor}\nignore_imports = [{stale}]"))
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "cluster.state.model -> cluster.api.context" in result.stdout + result.stderr
