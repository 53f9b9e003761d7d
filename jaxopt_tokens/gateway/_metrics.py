"""The gateway's Prometheus metrics (one registry a gateway). Docs: *Budget gateway*."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """Every metric the gateway exports, labelled by task where it has one."""

    def __init__(self, tasks: tuple[str, ...]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "jt_gateway_requests", "Requests by task and outcome", ["task", "outcome"], registry=r
        )
        self.rejected = Counter(
            "jt_gateway_rejected", "Requests refused by the gateway", ["reason"], registry=r
        )
        self.unknown_task = Counter(
            "jt_gateway_unknown_task", "Task names not in the workload", registry=r
        )
        self.rate = Gauge(
            "jt_gateway_arrival_rate", "Measured arrival rate (requests/s)", registry=r
        )
        self.share = Gauge("jt_gateway_task_share", "Measured task share", ["task"], registry=r)
        self.budget = Gauge(
            "jt_gateway_budget_tokens", "Current reasoning budget", ["task"], registry=r
        )
        self.predicted = Gauge(
            "jt_gateway_predicted_latency_seconds", "Model's mean latency of the policy", registry=r
        )
        self.latency = Histogram(
            "jt_gateway_latency_seconds",
            "Observed upstream latency",
            ["task"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.updates = Counter(
            "jt_gateway_policy_updates", "Control steps by action", ["action"], registry=r
        )
        self.solve_time = Histogram(
            "jt_gateway_solve_seconds",
            "Time of one control step",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.upstream_errors = Counter(
            "jt_gateway_upstream_errors", "Upstream faults", ["kind"], registry=r
        )
        self.in_flight = Gauge(
            "jt_gateway_in_flight", "Requests in flight through the gateway", registry=r
        )
        self.overloaded = Gauge(
            "jt_gateway_overloaded", "1 when no budget keeps the queue stable", registry=r
        )
        self.version = Gauge("jt_gateway_policy_version", "Policy version", registry=r)
        self.queue_state = Gauge(
            "jt_gateway_queue_state",
            "Requests in the system the last arrival found (the learned table's state)",
            registry=r,
        )
        self.sent_budget = Gauge(
            "jt_gateway_sent_budget_tokens",
            "Reasoning budget sent with the task's last request",
            ["task"],
            registry=r,
        )
        self.row_requests = Counter(
            "jt_gateway_policy_row_requests",
            "Requests by the row of the learned table they were given",
            ["row"],
            registry=r,
        )
        self.engine_queue = Gauge(
            "jt_gateway_engine_queue",
            "Engine's running plus waiting requests at its last read",
            registry=r,
        )
        self.engine_reads = Counter(
            "jt_gateway_engine_metrics_reads",
            "Reads of the engine's queue metrics by result",
            ["result"],
            registry=r,
        )
        self.violations = Counter(
            "jt_gateway_budget_violations",
            "Responses whose reasoning exceeded the budget sent (beyond the tolerance)",
            ["task"],
            registry=r,
        )
        self.unmeasured = Counter(
            "jt_gateway_reasoning_unmeasured",
            "Responses without a reasoning count or reasoning text",
            ["task"],
            registry=r,
        )
        self.reasoning = Histogram(
            "jt_gateway_reasoning_tokens",
            "Reasoning tokens of a response (usage, or estimated from its text)",
            ["task"],
            buckets=(0, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
            registry=r,
        )
        for t in tasks:
            self.budget.labels(t)
            self.violations.labels(t)
            self.share.labels(t)
            self.sent_budget.labels(t)
