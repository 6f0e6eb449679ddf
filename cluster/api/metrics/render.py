"""Metric families to bytes (Prometheus text 0.0.4 or OpenMetrics 1.0) and back.

Pure functions over ``prometheus_client`` families: the handler renders what it
collected, and the cluster scope parses every member's text, adds a ``member`` label and
renders the union.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as text_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EOF_LINE = b"# EOF\n"


class _Fixed:
    """A collector that yields families made elsewhere (no describe: nothing is checked
    for duplicates at registration, which the families never have)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: Sequence[Metric], openmetrics: bool = False) -> bytes:
    """The exposition of ``families``; OpenMetrics ends with ``# EOF``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))  # type: ignore[arg-type]
    return openmetrics_latest(registry) if openmetrics else text_latest(registry)


def render_parts(parts: Iterable[bytes], openmetrics: bool) -> bytes:
    """Renderings of disjoint family sets joined into one exposition (OpenMetrics: one
    ``# EOF`` at the end)."""
    if not openmetrics:
        return b"".join(parts)
    body = b"".join(p[:-len(EOF_LINE)] if p.endswith(EOF_LINE) else p for p in parts)
    return body + EOF_LINE


def wants_openmetrics(accept: str) -> bool:
    """Whether the scraper asked for OpenMetrics (Prometheus sends it first in Accept)."""
    return "application/openmetrics-text" in accept


def content_type(openmetrics: bool) -> str:
    return str(OPENMETRICS_TYPE) if openmetrics else TEXT_TYPE


def parse(text: str) -> list[Metric]:
    """The families of a Prometheus text exposition (raises ``ValueError`` if malformed)."""
    return list(text_string_to_metric_families(text))


def with_label(families: Iterable[Metric], name: str, value: str) -> list[Metric]:
    """Copies of ``families`` whose every sample carries ``name=value`` (replacing it)."""
    labelled = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [Sample(s.name, {**s.labels, name: value}, s.value, s.timestamp,
                               s.exemplar) for s in family.samples]
        labelled.append(copy)
    return labelled


def merge(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, with the samples of every group in order (the first group's
    help and type win; a family of another type under the same name is dropped, as one
    exposition cannot hold both)."""
    merged: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            known = merged.get(family.name)
            if known is None:
                known = merged[family.name] = Metric(family.name, family.documentation,
                                                     family.type, family.unit)
            if known.type == family.type:
                known.samples.extend(family.samples)
    return list(merged.values())
