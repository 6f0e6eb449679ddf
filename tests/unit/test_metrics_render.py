"""Rendering, parsing and the cluster scope's relabel and merge (cluster/api/metrics/render.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.api.metrics.render import (
    merge,
    parse,
    render,
    render_parts,
    wants_openmetrics,
    with_label,
)


def _families() -> list[Metric]:
    cpu = CounterMetricFamily("lxd_cpu_seconds", "CPU time.", labels=["cpu", "mode"])
    cpu.add_metric(["0", "user"], 1.5)
    procs = GaugeMetricFamily("lxd_procs_total", "Processes.")
    procs.add_metric([], 3)
    return [cpu, procs]


def test_text_format_is_lxds() -> None:
    text = render(_families()).decode()
    assert "# TYPE lxd_cpu_seconds_total counter\n" in text
    assert 'lxd_cpu_seconds_total{cpu="0",mode="user"} 1.5\n' in text
    assert "# TYPE lxd_procs_total gauge\nlxd_procs_total 3.0\n" in text
    assert not text.endswith("# EOF\n")


def test_openmetrics_parts_end_with_one_eof() -> None:
    first, second = _families()
    body = render_parts([render([first], True), render([second], True)], True).decode()
    assert body.count("# EOF") == 1 and body.endswith("# EOF\n")
    assert "lxd_cpu_seconds_total" in body and "lxd_procs_total 3.0" in body


def test_accept_header_picks_openmetrics() -> None:
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert not wants_openmetrics("text/plain;version=0.0.4")
    assert not wants_openmetrics("")


def test_relabel_and_merge_keep_every_members_series() -> None:
    one = with_label(parse(render(_families()).decode()), "member", "m1")
    two = with_label(parse(render(_families()).decode()), "member", "m2")
    text = render(merge([one, two])).decode()
    assert text.count("# TYPE lxd_cpu_seconds_total counter") == 1
    assert 'lxd_cpu_seconds_total{cpu="0",member="m1",mode="user"} 1.5' in text
    assert 'lxd_procs_total{member="m2"} 3.0' in text


def test_merge_drops_a_family_of_another_type_under_the_same_name() -> None:
    gauge = GaugeMetricFamily("lxd_cpu_seconds", "not a counter")
    gauge.add_metric([], 9)
    merged = merge([_families(), [gauge]])
    cpu = next(f for f in merged if f.name == "lxd_cpu_seconds")
    assert cpu.type == "counter" and [s.value for s in cpu.samples] == [1.5]


_label_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                        max_size=12)


@given(values=st.lists(st.tuples(_label_values, st.floats(allow_nan=False, width=32)),
                       min_size=1, max_size=8, unique_by=lambda v: v[0]))
def test_any_label_value_survives_render_and_parse(values: list[tuple[str, float]]) -> None:
    family = GaugeMetricFamily("corral_x", "x", labels=["name"])
    for name, value in values:
        family.add_metric([name], value)
    (back,) = parse(render([family]).decode())
    assert [(s.labels["name"], s.value) for s in back.samples] == [
        (n, float(v)) for n, v in values]
