"""Prometheus metrics of one postd process (its own registry: tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LATENESS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.posts = Gauge(
            "postd_posts", "Posts by lifecycle state", ["state"], registry=self.registry
        )
        self.publish_seconds = Histogram(
            "postd_publish_duration_seconds",
            "Duration of publish attempts, by platform",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lateness_seconds = Histogram(
            "postd_publish_lateness_seconds",
            "Start of the publish minus the post's due time",
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.deferrals = Counter(
            "postd_guardrail_deferrals",
            "Posts deferred by a guardrail, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.adapter_errors = Counter(
            "postd_adapter_errors",
            "Adapter errors, by platform and error class",
            ["platform", "error_class"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "postd_publish_outcomes",
            "Publish outcomes, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.ticks = Counter(
            "postd_dispatcher_ticks", "Dispatcher sweep ticks", registry=self.registry
        )
        self.webhook_attempts = Counter(
            "postd_webhook_attempts",
            "Webhook delivery attempts, by outcome (2xx, 3xx, 4xx, 5xx, error, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "postd_webhook_attempt_duration_seconds",
            "Duration of webhook delivery attempts",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhooks_disabled = Counter(
            "postd_webhooks_disabled",
            "Subscriptions disabled by failures, by reason",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
