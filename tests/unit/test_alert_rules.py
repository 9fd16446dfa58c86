"""The Prometheus rules in deploy/ carry the same thresholds as the jobs service's checks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"
EXPECTED = {  # alert name → (severity, threshold) from spec/inbound.md §7.3
    "DfmPendingBacklogWarning": ("warning", 500),
    "DfmPendingBacklogCritical": ("critical", 1000),
    "DfmProcessingDelay": ("warning", 600),
    "DfmWebhookErrorRateWarning": ("warning", 0.01),
    "DfmWebhookErrorRateCritical": ("critical", 0.05),
    "DfmSyncErrorRate": ("critical", 0.05),
    "DfmVendorFailureRate": ("critical", 0.10),
    "DfmLatencyP95": ("warning", 5),
    "DfmDeadEvents": ("warning", 0),
    "DfmAuthFailures": ("warning", 20),
    "DfmOutboxStuck": ("warning", 0),
    "DfmOutboxFailed": ("critical", 0),  # not in §7.3: accepted events the stream refused
    # spec/outbound.md §2.6: OAuth reinstall needed, mapping conflicts, provider configuration errors
    "DfmGhlOauthReinstallNeeded": ("critical", 0),
    "DfmMappingConflicts": ("warning", 0),
    "DfmProviderMisconfigured": ("critical", 0),
}


def test_rules_parse_and_match_the_spec_thresholds() -> None:
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) == set(EXPECTED)
    for name, (severity, threshold) in EXPECTED.items():
        rule = rules[name]
        assert rule["labels"]["severity"] == severity, name
        last = float(re.findall(r">\s*([0-9.]+)\s*$", rule["expr"].strip())[-1])
        assert last == threshold, (name, last)
        assert re.search(r"\bdfm_[a-z_]+", rule["expr"]), name


def test_metric_names_in_rules_exist_in_the_code() -> None:
    from prometheus_client import REGISTRY

    import services.clients.http
    import services.infra.delivery
    import services.ingress.metrics
    import services.jobs.alerts
    import services.jobs.service  # noqa: F401  (the consumer lag gauges)

    known = set()
    for metric in REGISTRY.collect():
        known.add(metric.name)
        known.update(s.name for s in metric.samples)
    used = set(re.findall(r"\b(dfm_[a-z_]+)", RULES.read_text()))
    missing = {m for m in used if not {m, m.removesuffix("_bucket"), m.removesuffix("_total")} & known}
    assert missing == set()


# --- gauges of the whole database or stream: the same value on every replica ------------------
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dfm-overview.json"
AGGREGATIONS = ("sum", "max", "min", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile")


def enclosing_aggregation(expr: str, at: int) -> str | None:
    """The nearest aggregation operator whose argument holds position ``at`` of ``expr``
    (functions such as ``min_over_time`` work per series and are looked through)."""
    depth, i = 0, at - 1
    while i >= 0:
        char = expr[i]
        if char == ")":
            depth += 1
        elif char == "(" and depth:
            depth -= 1
        elif char == "(":
            before = re.sub(r"\b(?:by|without)\s*\([^()]*\)\s*$", "", expr[:i].rstrip()).rstrip()
            name = re.search(r"([a-z_]+)$", before)
            if name and name.group(1) in AGGREGATIONS:
                return name.group(1)
            i = len(before) - (len(name.group(1)) if name else 0)
        i -= 1
    return None


def test_the_enclosing_aggregation_is_found_through_functions_and_by_clauses() -> None:
    expr = 'sum(max by (table) (m{a="1"})) + max(min_over_time(g[5m])) + sum(rate(c[5m])) + g'
    assert enclosing_aggregation(expr, expr.index("m{")) == "max"
    assert enclosing_aggregation(expr, expr.index("g[")) == "max"
    assert enclosing_aggregation(expr, expr.index("c[")) == "sum"
    assert enclosing_aggregation(expr, len(expr) - 1) is None


def test_gauges_of_the_whole_database_are_taken_with_max_across_replicas_never_summed() -> None:
    """Every jobs replica (every ingress process) exports the same backlog, lag and outbox
    figures: a sum would count each event once per replica (issue #20)."""
    import json

    from prometheus_client import REGISTRY

    import services.jobs.service  # noqa: F401  (registers the consumer-lag gauges)
    from services.ingress.metrics import REPLICATED_GAUGES as INGRESS_GAUGES
    from services.jobs.alerts import REPLICATED_GAUGES as JOBS_GAUGES

    gauges = {m.name for m in REGISTRY.collect() if m.type == "gauge"}
    replicated = set(JOBS_GAUGES) | set(INGRESS_GAUGES)
    assert replicated <= gauges
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [r["expr"] for r in group["rules"]]
    exprs += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    seen = set()
    for expr in exprs:
        for name in replicated:
            for found in re.finditer(rf"\b{name}\b", expr):
                seen.add(name)
                assert enclosing_aggregation(expr, found.start()) in ("max", "min"), (name, expr)
    assert {"dfm_events_pending", "dfm_consumer_pending_messages", "dfm_ingress_outbox_depth"} <= seen
