"""Prometheus metrics of the ingress (spec/inbound.md §7.2)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter(
    "dfm_webhook_requests_total", "Webhook requests by source and outcome", ["source", "outcome"]
)
REQUEST_DURATION = Histogram(
    "dfm_webhook_request_duration_seconds",
    "Webhook request latency",
    ["source", "outcome"],
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter(
    "dfm_webhook_auth_failures_total", "Webhook authentication failures", ["source", "reason"]
)
PUBLISH_DURATION = Histogram(
    "dfm_webhook_publish_duration_seconds",
    "Time to a JetStream PubAck (or the outbox insert)",
    buckets=LATENCY_BUCKETS,
)
OUTBOX_DEPTH = Gauge("dfm_ingress_outbox_depth", "Events in the outbox not yet on the stream")
OUTBOX_FAILED = Gauge("dfm_ingress_outbox_failed", "Outbox rows the stream refused for good")
OUTBOX_WRITES = Counter(
    "dfm_ingress_outbox_writes_total", "Events written to the outbox because NATS did not ack"
)
READINESS_PROBES = Counter(
    "dfm_ingress_readiness_probes_total",
    "Readiness probes run against PostgreSQL and JetStream (answers in between are cached)",
)
