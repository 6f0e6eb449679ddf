"""The import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and catch a breach.

Each case copies the source tree to a temporary directory, writes one forbidden import into
one module, runs ``lint-imports`` there and expects it to fail, naming the broken contract.
A function-local import is caught too (grimp reads every import statement), so hiding a
cycle inside a function no longer passes.

What import-linter cannot see, an import by name (``importlib.import_module("...")``), is
checked for the CLI here: no file under ``corral_cli/`` names ``node_agent``, and only the
three entry points that must load another package by name do so, each only its own
modules. That is how ``corral image build`` once built images inside the client.
"""

from __future__ import annotations

import ast
import os
import re
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


# The CLI files allowed to load a module by name, and the modules each may load: the
# handler modules of the CLI itself (lazily, so a command pays only for its own), the
# daemon that ``corral daemon`` runs, the dev-cluster tooling ``corral dev-cluster`` runs.
BY_NAME = {
    "main.py": ("corral_cli.",),
    "server.py": ("cluster.daemon",),
    "devcluster.py": ("devtools.devcluster", "devtools.nemesis", "devtools.nemesis_disk"),
}
NEVER_NAMED = re.compile(r"node_agent")
BY_NAME_WORDS = re.compile(r"importlib|__import__|import_module|runpy|\bexec\(|SourceFileLoader")


def _loaded_by_name(source: str) -> list[str]:
    """The literal names passed to ``import_module(...)``; a name that is not a literal
    (or an f-string with a literal start) is reported as ``<computed>``."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"):
            continue
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(arg.value)
        elif (isinstance(arg, ast.JoinedStr) and arg.values
              and isinstance(arg.values[0], ast.Constant)):
            names.append(str(arg.values[0].value))
        else:
            names.append("<computed>")
    return names


def cli_by_name_breaches(cli: Path) -> list[str]:
    """Every way a file under ``cli`` reaches past the client contract by name."""
    breaches = []
    for path in sorted(p for p in cli.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        text = path.read_text(errors="replace")
        rel = path.relative_to(cli).as_posix()
        if NEVER_NAMED.search(text):
            breaches.append(f"{rel} names node_agent")
        allowed = BY_NAME.get(rel)
        if allowed is None:
            if BY_NAME_WORDS.search(text):
                breaches.append(f"{rel} imports by name")
            continue
        for name in _loaded_by_name(text):
            if not any(name == a or (a.endswith(".") and name.startswith(a)) for a in allowed):
                breaches.append(f"{rel} loads {name} by name")
    return breaches


def test_the_cli_loads_nothing_of_the_daemon_by_name() -> None:
    assert cli_by_name_breaches(ROOT / "corral_cli") == []


CLI_DODGES = [
    ("images.py", 'importlib.import_module("node_agent.images.busybox")'),
    ("images.py", '__import__("cluster.state")'),
    ("format.py", "# builds with node_agent.images"),
    ("server.py", 'importlib.import_module("node_agent.images.busybox_vm")'),
    ("main.py", 'importlib.import_module("cluster.api.app")'),
    ("devcluster.py", "importlib.import_module(name)"),
]


@pytest.mark.parametrize(("module", "line"), CLI_DODGES, ids=[f"{m}:{x}" for m, x in CLI_DODGES])
def test_an_import_by_name_in_the_cli_is_caught(tmp_path: Path, module: str, line: str) -> None:
    cli = tmp_path / "corral_cli"
    shutil.copytree(ROOT / "corral_cli", cli, ignore=shutil.ignore_patterns("__pycache__"))
    (cli / module).write_text((cli / module).read_text() + f"\n\ndef _dodge() -> None:\n"
                              f"    {line}\n")
    assert any(b.startswith(module) for b in cli_by_name_breaches(cli))
