"""The metric names corral's code exports, found by reading the code, not running it.

Dashboards and alert rules must only use names corral serves. Many families only show
once something happened (a failover, a move, an HA replica), so a scrape cannot list them
all; the code can. Every family corral makes is a ``prometheus_client`` constructor call
whose first argument is its name, a string or ``PREFIX + "suffix"`` with a module-level
string ``PREFIX``, or a call of a module's helper that passes its first parameter there
(``def _gauge(name, ...): return GaugeMetricFamily(PREFIX + name, ...)``):

    GaugeMetricFamily("corral_members", ...)          -> corral_members
    CounterMetricFamily("lxd_operations", ...)        -> lxd_operations_total
    Histogram(PREFIX + "commit_latency_seconds", ...)  -> ..._bucket, ..._sum, ..._count

``exported_names`` gives the names samples carry on the wire (the text format adds
``_total`` to a counter, ``_bucket``/``_sum``/``_count`` to a histogram), each with the file
that makes it. LXD's instance families are named in ``corral_shared.instance_metrics``
(``FAMILIES``), which this reads as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from corral_shared.instance_metrics import FAMILIES, exposed_name

_COUNTERS = {"Counter", "CounterMetricFamily"}
_GAUGES = {"Gauge", "GaugeMetricFamily", "Info", "InfoMetricFamily"}
_HISTOGRAMS = {"Histogram", "HistogramMetricFamily"}
_SUMMARIES = {"Summary", "SummaryMetricFamily"}
_PREFIXES = ("corral_", "lxd_")


def wire_names(name: str, kind: str) -> list[str]:
    """The sample names a family called ``name`` of constructor ``kind`` exposes."""
    if kind in _COUNTERS:
        return [name if name.endswith("_total") else name + "_total"]
    if kind in _HISTOGRAMS:
        return [name + "_bucket", name + "_sum", name + "_count"]
    if kind in _SUMMARIES:
        return [name, name + "_sum", name + "_count"]
    return [name]


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments."""
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[node.targets[0].id] = node.value.value
    return found


def _text(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, constants), _text(node.right, constants)
        return left + right if left is not None and right is not None else None
    return None


def _kind(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


_KINDS = _COUNTERS | _GAUGES | _HISTOGRAMS | _SUMMARIES


def _helpers(tree: ast.Module, constants: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Functions that make a family named by their first parameter (after a constant
    prefix): function name -> (prefix, constructor)."""
    found = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or not fn.args.args:
            continue
        param = fn.args.args[0].arg
        for call in ast.walk(fn):
            if not (isinstance(call, ast.Call) and _kind(call) in _KINDS and call.args):
                continue
            arg = call.args[0]
            if isinstance(arg, ast.Name) and arg.id == param:
                found[fn.name] = ("", _kind(call))
            elif (isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add)
                  and isinstance(arg.right, ast.Name) and arg.right.id == param
                  and (prefix := _text(arg.left, constants)) is not None):
                found[fn.name] = (prefix, _kind(call))
    return found


def names_in_source(source: str) -> list[tuple[str, str]]:
    """``(family name, constructor)`` of every metric family a module's text makes."""
    tree = ast.parse(source)
    constants = _constants(tree)
    helpers = _helpers(tree, constants)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = _text(node.args[0], constants)
        kind = _kind(node)
        if kind in helpers and name is not None:
            prefix, kind = helpers[kind]
            name = prefix + name
        elif kind not in _KINDS:
            continue
        if name is not None and name.startswith(_PREFIXES):
            found.append((name, kind))
    return found


def exported_names(roots: Iterable[Path]) -> dict[str, str]:
    """Sample name -> where it is made, for every ``.py`` file under ``roots`` and LXD's
    instance families."""
    found = {exposed_name(family): "corral_shared/instance_metrics.py" for family in FAMILIES}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for name, kind in names_in_source(path.read_text(encoding="utf-8")):
                for wire in wire_names(name, kind):
                    found.setdefault(wire, str(path))
    return found
