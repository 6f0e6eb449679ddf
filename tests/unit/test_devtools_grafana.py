"""devtools/grafana.py: a dashboard's PromQL as Grafana would send it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.grafana import (
    GrafanaTime,
    extract,
    interpolate,
    label_values_query,
    main,
    metric_names,
    prometheus_targets,
    variable_names,
    variables,
)

PROM = {"type": "prometheus", "uid": "${DS}"}
BOARD = {
    "panels": [
        {"type": "row", "id": 1, "title": "Overview", "panels": []},
        {"type": "stat", "id": 2, "title": "Up", "datasource": PROM,
         "targets": [{"refId": "A", "expr": "up", "instant": True}]},
        {"type": "row", "id": 3, "title": "Instance: $name", "repeat": "name",
         "collapsed": True, "panels": [
             {"type": "timeseries", "id": 4, "title": "CPU", "datasource": PROM,
              "targets": [{"refId": "A", "expr": 'rate(x{name="$name"}[$__rate_interval])'},
                          {"refId": "B", "expr": "y", "hide": True}]}]},
        {"type": "row", "id": 5, "title": "Open row", "repeat": "member", "panels": []},
        {"type": "timeseries", "id": 6, "title": "Follows the open row", "datasource": PROM,
         "targets": [{"refId": "A", "expr": "z"}]},
        {"type": "logs", "id": 7, "title": "Logs",
         "datasource": {"type": "loki", "uid": "L"},
         "targets": [{"refId": "A", "expr": '{app="lxd"}'}]},
    ],
    "templating": {"list": [
        {"name": "DS", "type": "datasource", "query": "prometheus"},
        {"name": "job", "type": "query", "query": {"query": "label_values(up, job)"}},
        {"name": "top", "type": "custom", "query": "3, 5", "current": {"value": "5"}},
    ]},
}


def test_targets_keep_rows_repeats_and_hidden_queries_but_not_loki() -> None:
    found = [(t.panel_id, t.ref_id, t.instant, t.repeat, t.hidden)
             for t in prometheus_targets(BOARD)]
    assert found == [(2, "A", True, None, False), (4, "A", False, "name", False),
                     (4, "B", False, "name", True), (6, "A", False, "member", False)]


def test_variables_are_query_and_custom_ones_in_order() -> None:
    assert [(v.name, v.type, v.query, v.default) for v in variables(BOARD)] == [
        ("job", "query", "label_values(up, job)", None), ("top", "custom", "3, 5", "5")]


def test_interpolate_knows_grafanas_three_syntaxes() -> None:
    text = 'topk(${top}, x{job="$job",a="[[job]]",b="${job:raw}"}[$__rate_interval])'
    values = {"top": "5", "job": "lxd", "__rate_interval": "4s"}
    assert interpolate(text, values) == 'topk(5, x{job="lxd",a="lxd",b="lxd"}[4s])'
    assert variable_names(text) == {"top", "job", "__rate_interval"}
    assert interpolate("$__range_s", {"__range_s": "30", "__range": "30s"}) == "30"


def test_interpolate_refuses_unknown_variables_and_values_grafana_escapes() -> None:
    with pytest.raises(KeyError):
        interpolate("x{a=\"$nope\"}", {})
    with pytest.raises(ValueError):
        interpolate('x{name="$name"}', {"name": "a.b"})


def test_label_values_queries() -> None:
    assert label_values_query('label_values(lxd_procs_total{job="$job"}, project)') == (
        'lxd_procs_total{job="$job"}', "project")
    assert label_values_query("label_values(job)") == (None, "job")
    with pytest.raises(ValueError):
        label_values_query("query_result(up)")


def test_grafana_time_variables() -> None:
    short = GrafanaTime(range_s=20, scrape_s=1)
    assert short.variables() == {"__interval": "1s", "__interval_ms": "1000",
                                 "__rate_interval": "4s", "__range": "20s",
                                 "__range_s": "20", "__range_ms": "20000"}
    day = GrafanaTime(range_s=86400, scrape_s=15)
    assert day.interval_s == 87 and day.rate_interval_s == 102


@given(st.floats(min_value=1, max_value=1e7), st.sampled_from([1.0, 5.0, 15.0, 60.0]))
def test_a_rate_window_always_holds_two_scrapes(range_s: float, scrape_s: float) -> None:
    clock = GrafanaTime(range_s=range_s, scrape_s=scrape_s)
    assert clock.interval_s >= scrape_s
    assert clock.rate_interval_s >= 4 * scrape_s
    assert clock.rate_interval_s >= clock.interval_s + scrape_s


def test_metric_names_skip_functions_labels_keywords_and_durations() -> None:
    expr = ('sum by (name) (rate(lxd_cpu_seconds_total{mode!="idle",job="$job"}[$__range]))'
            ' - on (name) group_left (type) topk(${top}, lxd_memory_MemTotal_bytes offset 5m)'
            ' / ignoring(x) histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m])))'
            ' * 1e3 + count(up == 0) or vector(0) and bool_thing')
    assert metric_names(expr) == {"lxd_cpu_seconds_total", "lxd_memory_MemTotal_bytes",
                                  "a_bucket", "up", "bool_thing"}
    assert metric_names('x{a="sum(y)"}') == {"x"}
    assert metric_names("corral:recorded:rate5m") == {"corral:recorded:rate5m"}


def test_extract_writes_the_queries_only(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    board = tmp_path / "board.json"
    board.write_text(json.dumps(BOARD))
    main([str(board), "--source", "here@abc", "--note", "a test"])
    written = json.loads(capsys.readouterr().out)
    assert written == extract(BOARD, "here@abc", "a test")
    assert set(written) == {"source", "note", "variables", "targets"}
    assert [t["expr"] for t in written["targets"]] == [
        "up", 'rate(x{name="$name"}[$__rate_interval])', "y", "z"]
