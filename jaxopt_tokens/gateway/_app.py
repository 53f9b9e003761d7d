"""The budget gateway: an OpenAI-compatible proxy (Starlette on uvicorn, httpx upstream) that
writes each request's reasoning budget from the current policy.

Routes: `POST /v1/chat/completions` and `POST /v1/completions` get the budget fields of the
request's task (the same fields `export_policy` writes); `/metrics` (Prometheus text),
`/policy` (the current policy as `export` JSON, with the load it was solved at),
`/healthz`, `/readyz`; every other path is passed through to the upstream unchanged.

A client's own tighter output limit is kept; a request that carries its own budget is left
as sent (unless `override_client_budget`). Faults get one JSON line: 400 for a malformed body,
413 for one too large, 429 with `Retry-After` above `max_in_flight`, 502 when the upstream is
down or answers 5xx (its status named), 504 when it times out; a stream the upstream breaks
ends with an SSE `error` event. Docs: *Budget gateway*.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._config import GatewayConfig
from ._control import Controller, Decision

__all__ = ["build_app", "Gateway", "BUDGET_FIELDS"]

log = logging.getLogger("jaxopt_tokens.gateway")

#: the body fields by which a request carries its own reasoning budget
BUDGET_FIELDS = (
    "thinking_token_budget",
    "custom_params",
    "reasoning_effort",
    "chat_template_kwargs",
)
#: request headers not forwarded (hop-by-hop, or recomputed by the client library)
_DROP_HEADERS = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "accept-encoding",
}
_DROP_RESPONSE = {
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
}


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """One JSON line in the OpenAI error shape."""
    text = " ".join(str(message).split())
    return JSONResponse(
        {"error": {"message": text, "type": kind, "code": status}}, status, headers=headers
    )


class _Metrics:
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
        for t in tasks:
            self.budget.labels(t)
            self.share.labels(t)


class Gateway:
    """The gateway's state: configuration, controller, upstream client and metrics."""

    def __init__(self, config: GatewayConfig, controller: Controller):
        self.config = config
        self.controller = controller
        self.tasks = controller.task_names
        self.default_task = config.default_task or self.tasks[0]
        self.metrics = _Metrics(self.tasks)
        self.client: httpx.AsyncClient | None = None
        self.in_flight = 0
        self.classifier: Callable[[dict], str | None] | None = None
        if config.classifier:
            module, _, name = config.classifier.partition(":")
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            self.classifier = obj
        self._publish(controller.state)

    # ------------------------------------------------------------------ policy and metrics

    def _publish(self, state) -> None:
        m = self.metrics
        for name, b in zip(self.tasks, state.tokens):
            m.budget.labels(name).set(float(b))
        for name, s in zip(self.tasks, state.shares):
            m.share.labels(name).set(s)
        m.rate.set(state.arrival_rate)
        m.predicted.set(
            state.predicted_latency if state.predicted_latency < float("inf") else float("nan")
        )
        m.overloaded.set(1.0 if state.overloaded else 0.0)
        m.version.set(state.version)

    def record_decision(self, decision: Decision, old_tokens) -> None:
        self.metrics.updates.labels(decision.action).inc()
        self.metrics.solve_time.observe(decision.seconds)
        if decision.action == "update":
            new = decision.state
            log.info(
                json.dumps(
                    {
                        "event": "policy_update",
                        "version": new.version,
                        "reason": decision.reason,
                        "old": dict(zip(self.tasks, map(float, old_tokens))),
                        "new": dict(zip(self.tasks, map(float, new.tokens))),
                        "arrival_rate": new.arrival_rate,
                        "overloaded": new.overloaded,
                    }
                )
            )
            self._publish(new)
        elif decision.action == "failed":
            log.warning(json.dumps({"event": "solve_failed", "reason": decision.reason}))

    async def control_loop(self) -> None:
        """Re-solve every `interval` seconds, off the event loop."""
        while True:
            await asyncio.sleep(self.config.interval)
            old = self.controller.state.tokens
            try:
                decision = await asyncio.to_thread(self.controller.update)
            except Exception as e:  # noqa: BLE001 - the loop must survive any solver fault
                self.controller.solver_failures += 1
                log.error(
                    json.dumps({"event": "control_error", "error": f"{type(e).__name__}: {e}"})
                )
                continue
            self.record_decision(decision, old)

    # ------------------------------------------------------------------ classification

    def classify(self, request: Request, body: dict) -> str:
        """The request's task: header, `metadata.task_type`, model name, classifier, prompt
        rules, then the default task. Unknown names are counted and get the default."""
        name = request.headers.get(self.config.task_header)
        meta = body.get("metadata")
        if (
            name is None
            and isinstance(meta, dict)
            and isinstance(meta.get(self.config.task_field), str)
        ):
            name = meta[self.config.task_field]
        if name is None and isinstance(body.get("model"), str):
            name = self.config.models.get(body["model"])
        if name is None and self.classifier is not None:
            try:
                name = self.classifier(body)
            except Exception:  # noqa: BLE001 - a classifier fault is counted, not fatal
                self.metrics.rejected.labels("classifier_error").inc()
                name = None
        if name is None and self.config.rules:
            text = _prompt_text(body)
            name = next((r.task for r in self.config.rules if r.matches(text)), None)
        if name is None:
            return self.default_task
        if name not in self.tasks:
            self.metrics.unknown_task.inc()
            return self.default_task
        return name

    def with_budget(self, body: dict, task: str, path: str) -> dict:
        """`body` with the task's budget fields; a client's tighter limit and own budget kept."""
        fields = self.controller.state.request_fields(task)
        out = dict(body)
        if path.endswith("/completions") and not path.endswith("/chat/completions"):
            limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
            client = out.get("max_tokens")
            if limit is not None and not (isinstance(client, int) and 0 < client <= limit):
                out["max_tokens"] = limit
            return out
        own = any(k in body for k in BUDGET_FIELDS)
        for key, value in fields.items():
            if key in ("max_completion_tokens", "max_tokens"):
                client = [body.get(k) for k in ("max_completion_tokens", "max_tokens")]
                client = [
                    c for c in client if isinstance(c, int) and not isinstance(c, bool) and c > 0
                ]
                if client and min(client) <= value:
                    continue  # the client's own tighter limit wins
                out[key] = value
            elif not own or self.config.override_client_budget:
                out[key] = value
        return out


def _prompt_text(body: dict) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, str):
                    return c
                if isinstance(c, list):
                    return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _usage_tokens(payload: Any) -> int | None:
    if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
        n = payload["usage"].get("completion_tokens")
        return n if isinstance(n, int) else None
    return None


def build_app(gateway: Gateway) -> Starlette:
    """The ASGI application of `gateway` (its lifespan opens the upstream client and starts
    the control loop; shutdown waits for in-flight streams, then closes them)."""
    config = gateway.config
    base = config.upstream.rstrip("/")
    timeout = httpx.Timeout(config.upstream_timeout, connect=min(config.upstream_timeout, 10.0))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        limits = httpx.Limits(
            max_connections=config.max_in_flight + 16, max_keepalive_connections=64
        )
        gateway.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        loop = asyncio.create_task(gateway.control_loop())
        try:
            yield
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await gateway.client.aclose()

    def _headers(request: Request) -> dict[str, str]:
        drop = _DROP_HEADERS | {config.task_header.lower()}
        return {k: v for k, v in request.headers.items() if k.lower() not in drop}

    async def budgeted(request: Request) -> Response:
        m = gateway.metrics
        raw = await _read_body(request, config.max_body_bytes)
        if raw is None:
            m.rejected.labels("too_large").inc()
            return _error(
                413,
                f"request body larger than {config.max_body_bytes} bytes",
                "invalid_request_error",
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            m.rejected.labels("malformed").inc()
            return _error(
                400,
                f"request body is not valid JSON ({getattr(e, 'msg', e)})",
                "invalid_request_error",
            )
        if not isinstance(body, dict):
            m.rejected.labels("malformed").inc()
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        for key in ("max_completion_tokens", "max_tokens"):
            v = body.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                m.rejected.labels("malformed").inc()
                return _error(
                    400,
                    f"{key}: max tokens must be an integer >= 1, got {v!r}",
                    "invalid_request_error",
                )
        if gateway.in_flight >= config.max_in_flight:
            m.rejected.labels("overload").inc()
            return _error(
                429,
                f"the gateway has {gateway.in_flight} requests in flight (max_in_flight="
                f"{config.max_in_flight}); retry later",
                "rate_limit_error",
                headers={"Retry-After": str(config.retry_after)},
            )
        task = gateway.classify(request, body)
        k = gateway.tasks.index(task)
        gateway.controller.load.arrival(k)
        out = gateway.with_budget(body, task, request.url.path)
        stream = bool(body.get("stream"))
        gateway.in_flight += 1
        m.in_flight.set(gateway.in_flight)
        started = time.perf_counter()
        in_flight_at_start = gateway.in_flight
        released = False

        def release(outcome: str, tokens: int | None = None) -> None:
            nonlocal released
            if released:
                return
            released = True
            gateway.in_flight -= 1
            m.in_flight.set(gateway.in_flight)
            m.requests.labels(task, outcome).inc()
            elapsed = time.perf_counter() - started
            if outcome == "ok":
                m.latency.labels(task).observe(elapsed)
                if tokens:
                    gateway.controller.service.response(k, tokens, elapsed, in_flight_at_start)

        assert gateway.client is not None
        url = base + request.url.path
        try:
            upstream = await gateway.client.send(
                gateway.client.build_request(
                    "POST", url, json=out, headers=_headers(request), params=request.query_params
                ),
                stream=True,
            )
        except httpx.TimeoutException as e:
            release("upstream_timeout")
            m.upstream_errors.labels("timeout").inc()
            return _error(504, f"upstream {base} timed out ({type(e).__name__})", "upstream_error")
        except httpx.HTTPError as e:
            release("upstream_down")
            m.upstream_errors.labels("connect").inc()
            return _error(
                502, f"upstream {base} unreachable ({type(e).__name__}: {e})", "upstream_error"
            )
        headers = {k_: v for k_, v in upstream.headers.items() if k_.lower() not in _DROP_RESPONSE}
        if upstream.status_code >= 500:
            text = (await upstream.aread()).decode("utf-8", "replace")
            await upstream.aclose()
            release("upstream_error")
            m.upstream_errors.labels(f"status_{upstream.status_code}").inc()
            return _error(
                502, f"upstream answered {upstream.status_code}: {text[:200]}", "upstream_error"
            )
        if not stream or upstream.status_code != 200:
            try:
                content = await upstream.aread()
            except httpx.HTTPError as e:
                release("upstream_broken")
                m.upstream_errors.labels("broken").inc()
                return _error(
                    502,
                    f"upstream {base} broke the response ({type(e).__name__})",
                    "upstream_error",
                )
            finally:
                await upstream.aclose()
            tokens = None
            if upstream.status_code == 200:
                with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                    tokens = _usage_tokens(json.loads(content))
            release(
                "ok" if upstream.status_code == 200 else f"status_{upstream.status_code}", tokens
            )
            return Response(content, upstream.status_code, headers=headers)

        async def relay() -> AsyncIterator[bytes]:
            tokens, chunks, buffer = None, 0, b""
            outcome = "ok"
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                            chunks += 1
                            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                                tokens = _usage_tokens(json.loads(line[5:])) or tokens
            except httpx.HTTPError as e:
                outcome = "upstream_broken"
                m.upstream_errors.labels("broken_stream").inc()
                event = {
                    "error": {
                        "message": f"upstream {base} broke the stream ({type(e).__name__})",
                        "type": "upstream_error",
                        "code": 502,
                    }
                }
                yield f"event: error\ndata: {json.dumps(event)}\n\n".encode()
            except (asyncio.CancelledError, ClientDisconnect):
                outcome = "client_gone"
                raise
            finally:
                await upstream.aclose()
                release(outcome, tokens if tokens is not None else chunks)

        return StreamingResponse(relay(), upstream.status_code, headers=headers)

    async def passthrough(request: Request) -> Response:
        assert gateway.client is not None
        raw = await _read_body(request, config.max_body_bytes)
        if raw is None:
            return _error(
                413,
                f"request body larger than {config.max_body_bytes} bytes",
                "invalid_request_error",
            )
        try:
            upstream = await gateway.client.request(
                request.method,
                base + request.url.path,
                content=raw,
                headers=_headers(request),
                params=request.query_params,
            )
        except httpx.TimeoutException as e:
            gateway.metrics.upstream_errors.labels("timeout").inc()
            return _error(504, f"upstream {base} timed out ({type(e).__name__})", "upstream_error")
        except httpx.HTTPError as e:
            gateway.metrics.upstream_errors.labels("connect").inc()
            return _error(
                502, f"upstream {base} unreachable ({type(e).__name__}: {e})", "upstream_error"
            )
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        return Response(upstream.content, upstream.status_code, headers=headers)

    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(gateway.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def policy(request: Request) -> Response:
        s = gateway.controller.state
        rate, shares, count = gateway.controller.load.snapshot()
        body = {
            **s.policy,
            "gateway": {
                "version": s.version,
                "reason": s.reason,
                "solved_at": s.solved_at,
                "solved_at_rate": s.arrival_rate,
                "solved_at_shares": dict(zip(gateway.tasks, s.shares)),
                "overloaded": s.overloaded,
                "measured_rate": rate,
                "measured_shares": dict(zip(gateway.tasks, map(float, shares))),
                "requests_in_window": count,
                "solver_failures": gateway.controller.solver_failures,
            },
        }
        return Response(
            json.dumps(body, allow_nan=False, default=str), media_type="application/json"
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = gateway.client is not None and not gateway.client.is_closed
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    routes = [
        Route("/v1/chat/completions", budgeted, methods=["POST"]),
        Route("/v1/completions", budgeted, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/policy", policy, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/{path:path}", passthrough, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app
