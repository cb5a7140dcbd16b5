"""The metric names: one list in `std_daq_service.metrics`, the README's list checked against it."""

from __future__ import annotations

from conftest import REPO

from std_daq_service.metrics import METRICS, Families, RuntimeState, exposed_names


def readme_table() -> str:
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in METRICS.values():
        name = f"{spec.name}_total" if spec.kind == "counter" else spec.name
        lines.append(f"| `{name}` | {spec.kind} | {', '.join(spec.labels)} | {spec.help} |")
    return "\n".join(lines)


def test_the_readme_lists_every_metric_as_the_code_names_it():
    table = readme_table()
    assert table in (REPO / "README.md").read_text(), f"replace the table in README.md 'Metrics' with:\n{table}"


def test_names_follow_prometheus_conventions():
    for spec in METRICS.values():
        assert spec.name.startswith("std_daq_") and not spec.name.endswith("_total"), spec.name
        assert spec.kind in ("counter", "gauge", "histogram"), spec.name
    assert "std_daq_request_duration_seconds_bucket" in exposed_names()


def test_runtime_metrics_count_running_requests_by_type_and_report_a_missing_beacon_as_infinitely_old():
    state = RuntimeState("a.b.writer", "writer", "1.0", lambda: True, lambda: 3, lambda: None,
                         lambda: [{"request_type": "write"}, {"request_type": "write"}, {"request_type": "status"}])
    families = Families()
    state.fill(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
    assert samples[("std_daq_requests_running", (("request_type", "write"),))] == 2
    assert samples[("std_daq_requests_running", (("request_type", "status"),))] == 1
    assert samples[("std_daq_broker_reconnects_total", ())] == 3
    assert samples[("std_daq_beacon_age_seconds", ())] == float("inf")
