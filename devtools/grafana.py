"""What Grafana would send to Prometheus for a dashboard, without Grafana.

Tests that prove a dashboard works on corral (LXD's, grafana.com 19131, and corral's own in
``deploy/grafana/``) do not run Grafana: they take each panel's PromQL, put in the template
variables' values as Grafana does, and ask a real Prometheus (``devtools.prometheus``)::

    targets = prometheus_targets(dashboard)            # every panel's PromQL, rows included
    clock = GrafanaTime(range_s=60, scrape_s=1)         # $__range, $__interval, ...
    expr = interpolate(targets[0].expr, {**clock.variables(), "job": "lxd"})

``python -m devtools.grafana LXD.json --source canonical/lxd:grafana/LXD.json@SHA`` writes
the PromQL of a dashboard (targets and variable queries, nothing else) as JSON: how
``tests/data/lxd_dashboard_queries.json`` was made, since tests run without network.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# $name, ${name}, ${name:format}, [[name]] (Grafana's three variable syntaxes).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
# A value that every Grafana version puts in a query unchanged: its escaping for Prometheus
# (quotes; regex metacharacters for multi-value variables) touches none of these characters.
_PLAIN = re.compile(r"[A-Za-z0-9_-]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*\S)\s*,\s*)?(\w+)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class Target:
    """One Prometheus query of a panel. ``instant``: Grafana asks for one value at the
    end of the time range (pie charts, stats); otherwise a range query, one point per
    ``$__interval``. ``repeat``: the variable the panel (or its row) repeats over, each
    copy with one value of it. ``hidden``: disabled in the panel (Grafana does not run it
    until a user turns it on)."""

    panel_id: int
    title: str
    ref_id: str
    expr: str
    instant: bool
    repeat: str | None = None
    hidden: bool = False


@dataclass(frozen=True)
class Variable:
    """A template variable: ``query`` is a ``label_values(...)`` for a query variable, the
    comma-separated choices of a custom one (``default`` its selected value)."""

    name: str
    type: str
    query: str
    default: str | None = None


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """Every panel with the variable it repeats over: its own ``repeat`` or its row's. A
    collapsed row holds its panels; an open row's panels follow it up to the next row."""
    row_repeat = None
    for panel in panels:
        if panel.get("type") == "row":
            row_repeat = panel.get("repeat") or None
            yield panel, row_repeat
            for inner in panel.get("panels", []):
                yield inner, inner.get("repeat") or row_repeat
        else:
            yield panel, panel.get("repeat") or row_repeat


def _is_prometheus(datasource: Any) -> bool:
    """A target's or panel's datasource is Prometheus (or unset: the panel's default)."""
    if isinstance(datasource, Mapping):
        return datasource.get("type", "prometheus") == "prometheus"
    return True  # a bare name or variable: a dashboard of one datasource type


def prometheus_targets(dashboard: Mapping[str, Any]) -> list[Target]:
    """Every Prometheus target with an expression, in panel order (a collapsed row's
    panels included), hidden ones too. Other datasources' targets (Loki's LogQL) are left
    out."""
    found = []
    for panel, repeat in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            source = target.get("datasource", panel.get("datasource"))
            expr = target.get("expr", "")
            if expr and _is_prometheus(source):
                found.append(Target(int(panel["id"]), str(panel.get("title", "")),
                                    str(target.get("refId", "")), expr,
                                    bool(target.get("instant")), repeat,
                                    bool(target.get("hide"))))
    return found


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    """The query and custom template variables, in dashboard order (a variable's query
    may use the ones before it)."""
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query", "")
        if isinstance(query, Mapping):
            query = query.get("query", "")
        current = var.get("current") or {}
        default = current.get("value") if isinstance(current.get("value"), str) else None
        if var.get("type") in ("query", "custom"):
            out.append(Variable(var["name"], var["type"], str(query), default))
    return out


def label_values_query(query: str) -> tuple[str | None, str]:
    """``(selector, label)`` of ``label_values(selector, label)`` (selector None for
    ``label_values(label)``). Raises ``ValueError`` for any other variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match.group(1), match.group(2)


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every variable replaced by its value. Raises ``KeyError`` for a
    variable without a value and ``ValueError`` for a value Grafana would escape (so the
    result is what any Grafana version sends)."""
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        found = values[name]
        if not _PLAIN.fullmatch(found):
            raise ValueError(f"${name}={found!r}: Grafana would escape it")
        return found

    return _VARIABLE.sub(value, text)


def variable_names(text: str) -> set[str]:
    """The variables ``text`` refers to."""
    return {next(g for g in m.groups() if g is not None) for m in _VARIABLE.finditer(text)}


@dataclass(frozen=True)
class GrafanaTime:
    """The time range of a dashboard and its built-in variables.

    ``scrape_s`` is the Prometheus datasource's "scrape interval" setting, which should
    match Prometheus's own. ``$__interval`` is the range over the panel's data points, never
    below the scrape interval, here in whole seconds (Grafana rounds it to a "nice" step;
    with ranges shorter than ``max_points`` scrapes both give the scrape interval).
    ``$__rate_interval`` is Grafana's ``max($__interval + scrape interval, 4 * scrape
    interval)``, the shortest window in which ``rate()`` always has two samples.
    """

    range_s: float
    scrape_s: float = 1.0
    max_points: int = 1000

    @property
    def interval_s(self) -> int:
        return max(math.ceil(self.scrape_s), math.ceil(self.range_s / self.max_points))

    @property
    def rate_interval_s(self) -> int:
        return max(self.interval_s + math.ceil(self.scrape_s), 4 * math.ceil(self.scrape_s))

    def variables(self) -> dict[str, str]:
        whole = round(self.range_s)
        return {"__interval": f"{self.interval_s}s",
                "__interval_ms": str(self.interval_s * 1000),
                "__rate_interval": f"{self.rate_interval_s}s",
                "__range": f"{whole}s", "__range_s": str(whole),
                "__range_ms": str(round(self.range_s * 1000))}


# Identifiers of PromQL that never name a metric.
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                       "bool", "and", "or", "unless", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are not functions, aggregations,
    keywords, label lists, label matchers, durations, strings or variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {m.group(1) for m in _IDENTIFIER.finditer(text)
            if m.group(2) is None and m.group(1).lower() not in _KEYWORDS}


def extract(dashboard: Mapping[str, Any], source: str, note: str = "") -> dict[str, Any]:
    """A dashboard's PromQL only: its variables and Prometheus targets, and where they
    came from."""
    return {"source": source, "note": note,
            "variables": [asdict(v) for v in variables(dashboard)],
            "targets": [asdict(t) for t in prometheus_targets(dashboard)]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a dashboard's PromQL as JSON.")
    parser.add_argument("dashboard", help="a Grafana dashboard JSON file")
    parser.add_argument("--source", required=True,
                        help="where it came from, e.g. canonical/lxd:grafana/LXD.json@SHA")
    parser.add_argument("--note", default="", help="a sentence kept with the queries")
    args = parser.parse_args(argv)
    with open(args.dashboard, encoding="utf-8") as file:
        dashboard = json.load(file)
    json.dump(extract(dashboard, args.source, args.note), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
