"""The budget gateway: an OpenAI-compatible proxy (Starlette on uvicorn, httpx upstream) that
writes each request's reasoning budget from the current policy.

A budgeted request goes through named steps: `authorize` -> read and parse the body
(`_request.parse_body`, `check_body`) -> `classify` -> count the arrival (offered load,
refused or not) -> `apply_policy` -> `Admission.admit` (429 above `max_in_flight`) ->
`Upstream.send` (one error map) -> the answer, or the SSE relay. Every refusal is a
`GatewayError` answered in one place as one JSON line; an admitted request's slot is released
by the `Slot` whatever ends it (the response object owns it once streaming starts).

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (a trailing slash is the same
route); `GET` of the `passthrough` routes (default `/v1/models`); `/metrics` and `/policy`
(behind `admin_key` when set); `/healthz`; `/readyz` (follows the upstream). Anything else:
404. Docs: *Budget gateway*.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._config import GatewayConfig, import_classifier, redact
from ._control import Controller, Decision
from ._enforce import Enforcement, reasoning_text_chars, usage_counts
from ._learned import engine_queue
from ._metrics import Metrics
from ._request import (
    ENDPOINTS,
    GatewayError,
    apply_policy,
    check_body,
    client_fields,
    encode_body,
    parse_body,
    prompt_text,
)

__all__ = ["build_app", "Gateway", "Admission", "Slot", "Upstream", "QueueView", "RequestLog"]

log = logging.getLogger("jaxopt_tokens.gateway")

#: the request headers forwarded to the engine (an allow-list: engines read routing, request
#: ids and client addresses from headers too); `authorization` only when the gateway holds
#: no key of its own
_FORWARD_HEADERS = {"content-type", "accept", "user-agent", "traceparent", "tracestate", "baggage"}
_DROP_RESPONSE = {
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "location",
    "set-cookie",
    "server",
}


#: the upstream path of each budgeted endpoint kind (a trailing slash is dropped)
_PATHS = {kind: path for path, kind in ENDPOINTS.items()}


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    """One JSON line in the OpenAI error shape."""
    text = " ".join(str(message).split())
    return JSONResponse(
        {"error": {"message": text, "type": kind, "code": status}}, status, headers=headers
    )


def _log(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, default=str))


# --------------------------------------------------------------------------- admission


class Slot:
    """One admitted request: released once (`close`), with its outcome and usage recorded."""

    def __init__(self, admission: Admission, task: str, index: int, found: float, budget: float):
        self._admission = admission
        self.task, self.index = task, index
        self.found, self.budget = found, budget  # the queue it met, the budget it was sent
        self.arrived = time.time()
        self.started = time.monotonic()
        self._area = admission.area(self.started)
        self.closed = False

    def close(
        self, outcome: str, usage: tuple[int, int | None] | None = None, reasoning_chars: int = 0
    ) -> None:
        """Release the slot (idempotent) and record `outcome`, `usage` (completion tokens,
        reasoning tokens or None) and the characters of reasoning text in the answer."""
        if self.closed:
            return
        self.closed = True
        self._admission.release(self, outcome, usage, reasoning_chars)


class Admission:
    """Owns the count of requests in flight: `admit` refuses above `max_in_flight` (429)
    and `Slot.close` gives the place back and records the outcome."""

    def __init__(self, gateway: Gateway):
        self._gateway = gateway
        self.in_flight = 0
        self._area_total, self._area_at = 0.0, time.monotonic()

    def area(self, now: float) -> float:
        """The integral of the in-flight count over time up to `now`."""
        self._area_total += self.in_flight * (now - self._area_at)
        self._area_at = now
        return self._area_total

    def admit(self, task: str, index: int, found: float = 0.0, budget: float = 0.0) -> Slot:
        """A slot for a request of `task` that found `found` requests in the system and is
        sent `budget` reasoning tokens, or 429 above `max_in_flight`."""
        config, m = self._gateway.config, self._gateway.metrics
        if self.in_flight >= config.max_in_flight:
            m.rejected.labels("overload").inc()
            self._gateway.request_log.write(
                {"timestamp": time.time(), "task": task, "outcome": "overload", "found": found}
            )
            raise GatewayError(
                429,
                f"the gateway has {self.in_flight} requests in flight (max_in_flight="
                f"{config.max_in_flight}); retry later",
                "rate_limit_error",
                "overload",
                {"Retry-After": str(config.retry_after)},
            )
        slot = Slot(self, task, index, found, budget)  # its area starts before it counts
        self.in_flight += 1
        m.in_flight.set(self.in_flight)
        return slot

    def release(
        self,
        slot: Slot,
        outcome: str,
        usage: tuple[int, int | None] | None,
        reasoning_chars: int = 0,
    ) -> None:
        now = time.monotonic()
        elapsed = now - slot.started
        mean_in_flight = (self.area(now) - slot._area) / elapsed if elapsed > 0 else 1.0
        self.in_flight -= 1
        m = self._gateway.metrics
        m.in_flight.set(self.in_flight)
        m.requests.labels(slot.task, outcome).inc()
        record: dict[str, Any] = {
            "timestamp": slot.arrived,
            "task": slot.task,
            "outcome": outcome,
            "latency": elapsed,
            "found": slot.found,
            "budget": slot.budget,
        }
        if usage is not None:
            record["output_tokens"] = usage[0]
            if usage[1] is not None:
                record["reasoning_tokens"] = usage[1]
        self._gateway.request_log.write(record)
        if outcome == "ok":
            m.latency.labels(slot.task).observe(elapsed)
            reasoning = None if usage is None else usage[1]
            self._gateway.enforcement.record(slot.task, slot.budget, reasoning, reasoning_chars)
            if usage is not None:
                self._gateway.controller.service.response(
                    slot.index, usage[0], usage[1], slot.started, now, mean_in_flight
                )


# --------------------------------------------------------------------------- upstream


class Upstream:
    """The engine: one httpx client, one map from transport faults to `GatewayError`s whose
    messages name no URL and carry no upstream text (the details go to the log, redacted)."""

    def __init__(self, config: GatewayConfig, metrics: Metrics):
        self.base = config.upstream.rstrip("/")
        self.shown = redact(self.base)
        self.key = config.upstream_key
        self.metrics = metrics
        self.client: httpx.AsyncClient | None = None
        self._ready: tuple[float, bool] = (-1e9, False)
        self._timeout = httpx.Timeout(
            config.upstream_timeout, connect=min(config.upstream_timeout, 10.0)
        )
        self._limits = httpx.Limits(
            max_connections=config.max_in_flight + 16, max_keepalive_connections=64
        )

    def open(self) -> None:
        self.client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def headers(self, request: Request, forward: set[str]) -> dict[str, str]:
        """The headers sent upstream: the allowed ones of `request` (ASCII only: 400
        otherwise, before admission), `identity` encoding, and the gateway's key."""
        out = {}
        for k, v in request.headers.items():
            if k.lower() in forward:
                if not v.isascii():
                    raise GatewayError(400, f"header {k}: not ASCII")
                out[k] = v
        out["accept-encoding"] = "identity"  # a compressed stream is never relayed raw
        if self.key is not None:
            out["authorization"] = f"Bearer {self.key}"
        return out

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as e:
            self.metrics.upstream_errors.labels("timeout").inc()
            _log("upstream_fault", kind="timeout", upstream=self.shown, error=type(e).__name__)
            raise GatewayError(504, "upstream timed out", "upstream_error", "upstream_timeout")
        except (httpx.HTTPError, OSError, ValueError) as e:
            self.metrics.upstream_errors.labels("connect").inc()
            _log("upstream_fault", kind="connect", upstream=self.shown, error=type(e).__name__)
            raise GatewayError(502, "upstream unreachable", "upstream_error", "upstream_down")

    async def send(
        self, method: str, path: str, content: bytes, headers: dict[str, str], params: Any
    ) -> httpx.Response:
        """Send and return the streamed response; refuse 3xx and 5xx answers (502)."""
        assert self.client is not None
        with self._faults():
            response = await self.client.send(
                self.client.build_request(
                    method, self.base + path, content=content, headers=headers, params=params
                ),
                stream=True,
            )
        status = response.status_code
        if status >= 500 or 300 <= status < 400:
            await response.aclose()
            self.metrics.upstream_errors.labels(f"status_{status}").inc()
            _log("upstream_fault", kind="status", status=status, upstream=self.shown)
            what = "a redirect" if status < 400 else str(status)
            raise GatewayError(502, f"upstream answered {what}", "upstream_error", "upstream_error")
        return response

    async def read(self, response: httpx.Response) -> bytes:
        try:
            with self._faults():
                return await response.aread()
        finally:
            await response.aclose()

    def _auth(self) -> dict[str, str]:
        """The gateway's own key for the engine, as a header (none without one)."""
        return {} if self.key is None else {"authorization": f"Bearer {self.key}"}

    async def scrape(self, path: str, timeout: float) -> str | None:
        """The text of `GET path` on the upstream (its metrics), or None on any fault."""
        if self.client is None:
            return None
        try:
            r = await self.client.get(self.base + path, headers=self._auth(), timeout=timeout)
            return r.text if r.status_code == 200 and len(r.content) < (16 << 20) else None
        except (httpx.HTTPError, OSError, ValueError):
            return None

    async def ready(self, path: str, ttl: float = 1.0) -> bool:
        """Whether `GET path` on the upstream answers 200 (cached for `ttl` seconds)."""
        at, ok = self._ready
        if time.monotonic() - at < ttl or self.client is None:
            return ok and self.client is not None
        try:
            r = await self.client.get(self.base + path, headers=self._auth(), timeout=2.0)
            ok = r.status_code == 200
        except (httpx.HTTPError, OSError, ValueError):
            ok = False
        self._ready = (time.monotonic(), ok)
        return ok


# --------------------------------------------------------------------------- streaming


def _error_event(status: int, message: str, kind: str) -> bytes:
    event = {"error": {"message": message, "type": kind, "code": status}}
    return f"event: error\ndata: {json.dumps(event)}\n\n".encode()


class _Relay(StreamingResponse):
    """A relayed SSE stream that owns its upstream response and its slot: both are closed
    however the response ends (finished, upstream broken, client gone, shutdown)."""

    def __init__(self, gateway: Gateway, upstream: httpx.Response, slot: Slot, hide_usage: bool):
        self.gateway, self.upstream, self.slot = gateway, upstream, slot
        self.hide_usage = hide_usage
        self.outcome, self.usage = "client_gone", None
        self.reasoning_chars = 0
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        super().__init__(self._lines(), upstream.status_code, headers=headers)

    async def __call__(self, scope, receive, send) -> None:
        self.gateway.streams.add(self)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.gateway.streams.discard(self)
            await self.upstream.aclose()
            self.slot.close(self.outcome, self.usage, self.reasoning_chars)

    async def cut(self) -> None:
        """End the stream now (shutdown): the client gets an SSE `error` event."""
        self.gateway.metrics.upstream_errors.labels("shutdown").inc()
        await self.upstream.aclose()

    async def _lines(self) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            async for chunk in self.upstream.aiter_bytes():
                *lines, buffer = (buffer + chunk).split(b"\n")
                out = [line for line in lines if self._keep(line)]
                if out:
                    yield b"".join(line + b"\n" for line in out)
            if buffer:
                yield buffer
            self.outcome = "ok"
        except (httpx.HTTPError, httpx.StreamClosed) as e:
            shutting_down = self.gateway.draining
            self.outcome = "shutdown" if shutting_down else "upstream_broken"
            if not shutting_down:
                self.gateway.metrics.upstream_errors.labels("broken_stream").inc()
                _log("upstream_fault", kind="broken_stream", error=type(e).__name__)
            # the event starts on a line of its own even when the upstream cut a line
            prefix = b"\n\n" if buffer else b""
            message = (
                "the gateway is shutting down; retry"
                if shutting_down
                else "upstream broke the stream"
            )
            yield prefix + _error_event(503 if shutting_down else 502, message, "upstream_error")
        except (asyncio.CancelledError, ClientDisconnect):
            self.outcome = "client_gone"
            raise

    def _keep(self, line: bytes) -> bool:
        """Record usage from a `data:` line; drop the usage-only chunk the gateway asked
        for on the client's behalf."""
        if not line.startswith(b"data:") or line[5:].strip() in (b"", b"[DONE]"):
            return True
        with contextlib.suppress(ValueError):
            payload = json.loads(line[5:])
            self.reasoning_chars += reasoning_text_chars(payload)
            usage = usage_counts(payload)
            if usage is not None:
                self.usage = usage
                if self.hide_usage and not payload.get("choices"):
                    return False
        return True


# --------------------------------------------------------------------------- queue and log


class QueueView:
    """The requests in the system a new arrival finds (the state a learned table is read
    at): the gateway's own count in flight, or with `queue_source = "engine"` the engine's
    running plus waiting requests, read from its Prometheus metrics every
    `engine_metrics_interval` seconds (one view for every gateway replica in front of it).
    A reading older than five intervals, or none, falls back to the gateway's own count."""

    def __init__(self, gateway: Gateway):
        self._gateway = gateway
        self.engine: float | None = None
        self.read_at = -math.inf

    def found(self) -> tuple[float, str]:
        """(requests in the system now, where the number comes from)."""
        g = self._gateway
        if g.config.queue_source == "engine" and self.engine is not None:
            if time.monotonic() - self.read_at <= 5 * g.config.engine_metrics_interval:
                return self.engine, "engine"
        return float(g.admission.in_flight), "gateway"

    async def poll(self) -> None:
        """Read the engine's queue metrics until cancelled."""
        g = self._gateway
        interval = g.config.engine_metrics_interval
        while True:
            text = await g.upstream.scrape(g.config.engine_metrics_path, min(4 * interval, 5.0))
            value = None if text is None else engine_queue(text, g.config.engine)
            if value is None:
                g.metrics.engine_reads.labels("failed").inc()
            else:
                self.engine, self.read_at = value, time.monotonic()
                g.metrics.engine_queue.set(value)
                g.metrics.engine_reads.labels("ok").inc()
            await asyncio.sleep(interval)


class RequestLog:
    """Appends one JSON line per request (arrival time, task, outcome, latency, tokens, the
    queue it found, the budget it was sent) to `request_log`, a trace `read_trace` reads.
    Off when no file is configured; a write fault is logged once and turns it off."""

    def __init__(self, path: str | None):
        self.path = path
        self._file: Any = None

    def open(self) -> None:
        if self.path is not None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
        except (OSError, ValueError) as e:
            log.error(json.dumps({"event": "request_log_error", "error": type(e).__name__}))
            self.close()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


# --------------------------------------------------------------------------- the gateway


class Gateway:
    """The gateway's state: configuration, controller, admission, upstream and metrics."""

    def __init__(self, config: GatewayConfig, controller: Controller):
        self.config = config
        self.controller = controller
        self.tasks = controller.task_names
        self.default_task = config.default_task or self.tasks[0]
        self.metrics = Metrics(self.tasks)
        self.admission = Admission(self)
        self.upstream = Upstream(config, self.metrics)
        self.streams: set[_Relay] = set()
        self.queue = QueueView(self)
        self.enforcement = Enforcement(
            self.tasks, config.budget_tolerance, self.metrics, judged=config.engine != "openai"
        )
        self.request_log = RequestLog(config.request_log)
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.allowed = {
            kind: client_fields(kind, config.engine, config.allow_fields)
            for kind in ("chat", "completions")
        }
        self.classifier: Callable[[dict], str | None] | None = (
            import_classifier(config.classifier) if config.classifier else None
        )
        self._publish(controller.state)

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    # ------------------------------------------------------------------ policy and metrics

    def _publish(self, state) -> None:
        m = self.metrics
        for name, b in zip(self.tasks, state.tokens):
            m.budget.labels(name).set(float(b))
        for name, s in zip(self.tasks, state.shares):
            m.share.labels(name).set(s)
        m.rate.set(state.arrival_rate)
        inf = float("inf")
        m.predicted.set(state.predicted_latency if state.predicted_latency < inf else float("nan"))
        m.overloaded.set(1.0 if state.overloaded else 0.0)
        m.version.set(state.version)

    def record_decision(self, decision: Decision, old_tokens) -> None:
        self.metrics.updates.labels(decision.action).inc()
        self.metrics.solve_time.observe(decision.seconds)
        if decision.action == "update":
            new = decision.state
            _log(
                "policy_update",
                version=new.version,
                reason=decision.reason,
                old=dict(zip(self.tasks, map(float, old_tokens))),
                new=dict(zip(self.tasks, map(float, new.tokens))),
                arrival_rate=new.arrival_rate,
                overloaded=new.overloaded,
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

    def begin_drain(self) -> None:
        """Start the shutdown drain (from any thread, e.g. a signal handler): `/readyz`
        turns unready, and streams still open after `shutdown_grace` seconds end with an
        SSE `error` event."""
        loop = self.loop
        if loop is None or self.draining:
            return
        self.draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._cut_after_grace()))

    async def _cut_after_grace(self) -> None:
        await asyncio.sleep(self.config.shutdown_grace)
        for stream in list(self.streams):
            await stream.cut()

    # ------------------------------------------------------------------ the request's steps

    def authorize(self, request: Request, key: str | None) -> None:
        """Refuse (401) a request without `Authorization: Bearer <key>` when a key is set."""
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            self.metrics.rejected.labels("unauthorized").inc()
            raise GatewayError(
                401,
                "missing or wrong API key",
                "authentication_error",
                "unauthorized",
                {"WWW-Authenticate": "Bearer"},
            )

    async def read_body(self, request: Request) -> bytes:
        """The body, refused (413) past `max_body_bytes` without reading further."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = GatewayError(413, f"request body larger than {limit} bytes", reason="too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def classify(self, request: Request, body: dict) -> str:
        """The request's task: header, `metadata.task_type` (both only with
        `trust_client_task`), model name, classifier, prompt rules, then the default task.
        Unknown names are counted and get the default."""
        trusted = self.config.trust_client_task
        name = request.headers.get(self.config.task_header) if trusted else None
        meta = body.get("metadata") if trusted else None
        if name is None and isinstance(meta, dict):
            value = meta.get(self.config.task_field)
            name = value if isinstance(value, str) else None
        if name is None and isinstance(body.get("model"), str):
            name = self.config.models.get(body["model"])
        if name is None and self.classifier is not None:
            try:
                value = self.classifier(body)
                name = value if isinstance(value, str) else None
            except Exception:  # noqa: BLE001 - a classifier fault is counted, not fatal
                self.metrics.rejected.labels("classifier_error").inc()
        if name is None and self.config.rules:
            text = prompt_text(body)
            name = next((r.task for r in self.config.rules if r.matches(text)), None)
        if name is None:
            return self.default_task
        if name not in self.tasks:
            self.metrics.unknown_task.inc()
            return self.default_task
        return name

    def row(self, task: str) -> tuple[float, int]:
        """(requests in the system the arrival finds, the policy row it is given: 0 unless a
        learned table is served), recorded in the metrics."""
        found, _ = self.queue.found()
        learned = self.controller.learned
        row = 0 if learned is None else learned.row(found)
        self.metrics.queue_state.set(found)
        if learned is not None:
            self.metrics.row_requests.labels(str(row)).inc()
        return found, row

    def prepare(self, body: dict, task: str, endpoint: str, row: int = 0) -> tuple[bytes, bool]:
        """(the forwarded body's bytes, whether the gateway added `include_usage`) under the
        policy's `row`."""
        fields = self.controller.state.request_fields(task, row)
        out = apply_policy(body, fields, endpoint, self.config.override_client_budget)
        hide_usage = False
        if out.get("stream"):
            options = dict(out.get("stream_options") or {})
            hide_usage = not options.get("include_usage")
            options["include_usage"] = True  # the service estimate needs the token counts
            out["stream_options"] = options
        return encode_body(out), hide_usage

    def headers(self, request: Request) -> dict[str, str]:
        forward = set(_FORWARD_HEADERS)
        if self.config.api_key is None and self.config.upstream_key is None:
            forward.add("authorization")  # the engine's own key, when the gateway has none
        return self.upstream.headers(request, forward)


# --------------------------------------------------------------------------- handlers


def _guarded(handler):
    """Answer a `GatewayError` (and any fault) as one JSON line; never a traceback."""

    async def run(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        try:
            return await handler(gateway, request)
        except GatewayError as e:
            if e.reason == "malformed":
                gateway.metrics.rejected.labels("malformed").inc()
            return _error(e.status, e.message, e.kind, e.headers)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - one line, never a traceback to the client
            log.error(json.dumps({"event": "internal_error", "error": type(e).__name__}))
            return _error(500, "internal error in the gateway", "internal_error")

    return run


async def _budgeted(gateway: Gateway, request: Request) -> Response:
    endpoint = ENDPOINTS[request.url.path.rstrip("/")]
    gateway.authorize(request, gateway.config.api_key)
    body = parse_body(await gateway.read_body(request))
    check_body(body, gateway.allowed[endpoint], gateway.config.max_choices)
    task = gateway.classify(request, body)
    index = gateway.tasks.index(task)
    gateway.controller.load.arrival(index)  # offered load: counted before admission
    found, row = gateway.row(task)
    content, hide_usage = gateway.prepare(body, task, endpoint, row)
    headers = gateway.headers(request)
    budget = gateway.controller.state.budget(task, row)
    slot = gateway.admission.admit(task, index, found, budget)
    gateway.metrics.sent_budget.labels(task).set(budget)
    outcome = "gateway_error"
    try:
        upstream = await gateway.upstream.send(
            "POST", _PATHS[endpoint], content, headers, request.query_params
        )
        if body.get("stream") and upstream.status_code == 200:
            relay = _Relay(gateway, upstream, slot, hide_usage)
            slot = None  # the response owns it now
            return relay
        raw = await gateway.upstream.read(upstream)
        return _answer(upstream, raw, slot)
    except GatewayError as e:
        outcome = e.reason
        raise
    finally:
        if slot is not None:
            slot.close(outcome)


def _answer(upstream: httpx.Response, raw: bytes, slot: Slot) -> Response:
    """A non-streamed answer: 200 passed on (usage recorded); a 4xx as one JSON line with
    the engine's own message (its client-facing validation error)."""
    status = upstream.status_code
    payload: Any = None
    with contextlib.suppress(ValueError):
        payload = json.loads(raw)
    if status == 200:
        slot.close("ok", usage_counts(payload), reasoning_text_chars(payload))
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        return Response(raw, status, headers=headers)
    slot.close(f"status_{status}")
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = payload.get("message") if isinstance(payload, dict) else None
    text = message[:300] if isinstance(message, str) else "the engine refused the request"
    return _error(status, text, "invalid_request_error" if status < 500 else "upstream_error")


#: a path segment below a pass-through route: no dot segments, no encoded characters
_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")


def _passthrough_path(route: str, request: Request) -> str:
    """The upstream path of a pass-through request: `route` itself, or `route/rest` where
    every segment of `rest` is plain (404 for `..`, `.`, percent-encoding or backslashes,
    which would otherwise reach other routes of the engine after normalisation)."""
    rest = request.path_params.get("rest")
    raw = request.scope.get("raw_path", b"")
    if rest is None:
        return route
    if b"%" in raw or b"\\" in raw or not all(_SEGMENT.fullmatch(p) for p in rest.split("/")):
        raise GatewayError(
            404, f"{route}/...: not a plain path below the pass-through route", reason="not_found"
        )
    return f"{route}/{rest}"


def _passthrough(route: str):
    async def handler(gateway: Gateway, request: Request) -> Response:
        gateway.authorize(request, gateway.config.api_key)
        path = _passthrough_path(route, request)
        return await _forward_get(gateway, request, path)

    return handler


async def _forward_get(gateway: Gateway, request: Request, path: str) -> Response:
    upstream = await gateway.upstream.send(
        "GET", path, b"", gateway.headers(request), request.query_params
    )
    raw = await gateway.upstream.read(upstream)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
    return Response(raw, upstream.status_code, headers=headers)


async def _metrics(gateway: Gateway, request: Request) -> Response:
    gateway.authorize(request, gateway.config.admin_key)
    return Response(
        generate_latest(gateway.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _policy(gateway: Gateway, request: Request) -> Response:
    gateway.authorize(request, gateway.config.admin_key)
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
        "queue": _queue_view(gateway),
        "enforcement": gateway.enforcement.report(),
    }
    return Response(json.dumps(body, allow_nan=False, default=str), media_type="application/json")


def _queue_view(gateway: Gateway) -> dict[str, Any]:
    """The queue state now, where it comes from, and the learned table when one is served."""
    found, source = gateway.queue.found()
    out: dict[str, Any] = {
        "queue_source": gateway.config.queue_source,
        "in_system": found,
        "read_from": source,
    }
    if gateway.config.queue_source == "engine":
        age = time.monotonic() - gateway.queue.read_at
        out["engine_read_age_s"] = age if math.isfinite(age) else None
    learned = gateway.controller.learned
    if learned is not None:
        row = learned.row(found)
        out["learned"] = {
            "file": learned.source,
            "states": learned.states,
            "row_now": row,
            "budgets_by_state": {
                task: [gateway.controller.state.budget(task, s) for s in range(learned.states + 1)]
                for task in gateway.tasks
            },
            "budgets_now": {t: gateway.controller.state.budget(t, row) for t in gateway.tasks},
            "replayed_held_out": learned.replayed,
        }
    return out


async def _healthz(gateway: Gateway, request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(gateway: Gateway, request: Request) -> Response:
    ready = not gateway.draining and await gateway.upstream.ready(gateway.config.ready_path)
    return JSONResponse({"ready": ready}, 200 if ready else 503)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return _error(
            405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"
        )
    return _error(
        404,
        f"{request.url.path} is not a route of the gateway (budgeted: {', '.join(ENDPOINTS)})",
        "invalid_request_error",
    )


def routes_of(config: GatewayConfig) -> list[Route]:
    """Every route the gateway serves: the budgeted ones (with and without a trailing
    slash), the `passthrough` GET routes, and its own."""
    routes = []
    for path in ENDPOINTS:
        routes += [Route(p, _guarded(_budgeted), methods=["POST"]) for p in (path, path + "/")]
    for path in config.passthrough:
        handler = _guarded(_passthrough(path))
        routes += [Route(path, handler, methods=["GET"])]
        routes += [Route(path + "/{rest:path}", handler, methods=["GET"])]
    for path, handler in (
        ("/metrics", _metrics),
        ("/policy", _policy),
        ("/healthz", _healthz),
        ("/readyz", _readyz),
    ):
        routes.append(Route(path, _guarded(handler), methods=["GET"]))
    return routes


def build_app(gateway: Gateway) -> Starlette:
    """The ASGI application of `gateway` (its lifespan opens the upstream client, starts the
    measurement clock and the control loop; shutdown waits for in-flight streams)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        gateway.loop = asyncio.get_running_loop()
        gateway.upstream.open()
        gateway.request_log.open()
        gateway.controller.load.start()  # the rate's clock starts when serving starts
        tasks = [asyncio.create_task(gateway.control_loop())]
        if gateway.config.queue_source == "engine":
            tasks.append(asyncio.create_task(gateway.queue.poll()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await gateway.upstream.close()
            gateway.request_log.close()

    app = Starlette(
        routes=routes_of(gateway.config),
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.router.redirect_slashes = False  # a redirect would name the gateway's own address
    app.state.gateway = gateway
    return app
