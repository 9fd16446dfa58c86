"""The Prometheus rules in deploy/ carry the same thresholds as the jobs service's checks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

RULES = Path(__file__).parents[1] / "deploy" / "prometheus" / "alerts.yml"
EXPECTED = {  # alert name → (severity, threshold) from spec/inbound.md §7.3
    "DfmPendingBacklogWarning": ("warning", 500), "DfmPendingBacklogCritical": ("critical", 1000),
    "DfmProcessingDelay": ("warning", 600), "DfmWebhookErrorRateWarning": ("warning", 0.01),
    "DfmWebhookErrorRateCritical": ("critical", 0.05), "DfmSyncErrorRate": ("critical", 0.05),
    "DfmVendorFailureRate": ("critical", 0.10), "DfmLatencyP95": ("warning", 5),
    "DfmDeadEvents": ("warning", 0), "DfmAuthFailures": ("warning", 20), "DfmOutboxStuck": ("warning", 0),
    "DfmOutboxFailed": ("critical", 0),  # not in §7.3: accepted events the stream refused
    # spec/outbound.md §2.6: OAuth reinstall needed, mapping conflicts, provider configuration errors
    "DfmGhlOauthReinstallNeeded": ("critical", 0), "DfmMappingConflicts": ("warning", 0),
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

    import services.clients.http  # noqa: F401  (registers the vendor metrics)
    import services.infra.delivery  # noqa: F401
    import services.ingress.metrics  # noqa: F401
    import services.jobs.alerts  # noqa: F401

    known = set()
    for metric in REGISTRY.collect():
        known.add(metric.name)
        known.update(s.name for s in metric.samples)
    used = set(re.findall(r"\b(dfm_[a-z_]+)", RULES.read_text()))
    missing = {m for m in used if not {m, m.removesuffix("_bucket"), m.removesuffix("_total")} & known}
    assert missing == set()
