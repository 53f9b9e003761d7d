"""A fake serving engine for the gateway's tests: a real HTTP server (Starlette on uvicorn) that
speaks the OpenAI chat-completions API the way vLLM and SGLang do.

- Requests are validated with the engines' own request models as pinned in
  `engine_schemas.validate_request` (400 for what they reject).
- Each request's reasoning is its natural length (default 300 tokens; `reason=N` in the prompt
  sets it) cut at the enforced thinking budget (none when thinking is off), plus a 20-token
  answer, cut at the output limit. Usage reports `reasoning_tokens`.
- Durations follow a continuously batching server, `(prefill + tokens) x (tau0 + tau1 n)`
  with n the requests running (recomputed every eighth of the tokens, as the batch changes),
  times `scale` (scaled time, so tests run fast).
- Streams are server-sent events, one chunk per few tokens, usage last when asked for.
- `break_after` chunks, the stream is cut (the connection drops mid-stream).
- `GET /metrics` publishes the queue as the engine does (vLLM's `vllm:num_requests_running`
  and `vllm:num_requests_waiting`, SGLang's `sglang:num_running_reqs` and
  `sglang:num_queue_reqs`): the requests running, and `waiting` (set by a test).

`Loopback` runs any ASGI app on 127.0.0.1 in a thread, and can stop and restart it on the same
port.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time

import uvicorn
from engine_schemas import RequestError, validate_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: request fields outside the pinned budget schema that clients send and engines accept
_GENERIC = {
    "stream",
    "stream_options",
    "metadata",
    "temperature",
    "top_p",
    "n",
    "user",
    "seed",
    "stop",
}
ANSWER_TOKENS = 20


class FakeEngine:
    def __init__(
        self,
        kind="vllm",
        step_time=(0.01, 0.0005),
        scale=0.01,
        prefill=5,
        reason=300,
        ignore_budget=False,
    ):
        self.kind = kind
        self.ignore_budget = ignore_budget  # accepts the budget and does not enforce it
        self.tau0, self.tau1 = step_time
        self.scale = scale
        self.prefill = prefill
        self.reason = reason
        self.running = 0
        self.waiting = 0
        self.received: list[dict] = []
        self.break_after: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/received", self.bodies, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ]
        )

    async def bodies(self, request: Request):
        """The request bodies accepted so far (for a test or benchmark in another process)."""
        return JSONResponse(self.received)

    async def metrics(self, request: Request):
        """The queue in the engine's own Prometheus names (two label sets, as a server with
        two model replicas would publish)."""
        running, waiting = {
            "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
            "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
        }.get(self.kind, ("fake:running", "fake:waiting"))
        half = self.waiting // 2
        text = (
            f"# HELP {running} Requests running.\n# TYPE {running} gauge\n"
            f'{running}{{model_name="fake",engine="0"}} {float(self.running)}\n'
            f"# HELP {waiting} Requests waiting.\n# TYPE {waiting} gauge\n"
            f'{waiting}{{model_name="fake",engine="0"}} {float(half)}\n'
            f'{waiting}{{model_name="fake",engine="1"}} {float(self.waiting - half)}\n'
        )
        return Response(text, media_type="text/plain; version=0.0.4")

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def _plan(self, body: dict) -> tuple[int, int]:
        """(reasoning tokens, completion tokens) the engine generates for `body`."""
        schema = {k: v for k, v in body.items() if k not in _GENERIC}
        acts = validate_request(self.kind, schema)
        text = json.dumps(body.get("messages"))
        m = re.search(r"reason=(\d+)", text)
        natural = int(m.group(1)) if m else self.reason
        if acts["enable_thinking"] is False:
            reasoning = 0
        elif acts["thinking_budget"] is not None and not self.ignore_budget:
            reasoning = min(natural, acts["thinking_budget"])
        else:
            reasoning = natural
        total = reasoning + ANSWER_TOKENS
        if acts["max_new_tokens"] is not None:
            total = min(total, acts["max_new_tokens"])
        return min(reasoning, total), total

    def _step(self) -> float:
        return self.scale * (self.tau0 + self.tau1 * max(self.running, 1))

    async def chat(self, request: Request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "bad json"}}, 400)
        try:
            reasoning, total = self._plan(body)
        except RequestError as e:
            return JSONResponse({"error": {"message": str(e), "type": "BadRequestError"}}, 400)
        self.received.append(body)
        usage = {"prompt_tokens": 10, "completion_tokens": total, "total_tokens": 10 + total}
        # llama.cpp reports no reasoning count: its reasoning is the message's
        # `reasoning_content` (here 4 characters a token)
        counted = self.kind != "llamacpp"
        if counted:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        created = int(time.time())
        if not body.get("stream"):
            self.running += 1
            try:  # the step time follows the batch as it changes, a step block at a time
                await asyncio.sleep(self.prefill * self._step())
                per = max(1, math.ceil(total / 8))
                for i in range(0, total, per):
                    await asyncio.sleep(min(per, total - i) * self._step())
            finally:
                self.running -= 1
            return JSONResponse(
                {
                    "id": "cmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "x" * ANSWER_TOKENS,
                                **({} if counted else {"reasoning_content": "abc " * reasoning}),
                            },
                            "finish_reason": "stop" if total > reasoning else "length",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            self.running += 1
            try:
                await asyncio.sleep(self.prefill * self._step())
                per = max(1, math.ceil(total / 8))
                sent = 0
                for i in range(0, total, per):
                    if self.break_after is not None and sent >= self.break_after:
                        raise ConnectionAbortedError("the fake engine dies mid-stream")
                    n = min(per, total - i)
                    await asyncio.sleep(n * self._step())
                    thought = max(0, min(i + n, reasoning) - i)
                    delta = {"content": "x" * (n - thought)}
                    if thought and not counted:
                        delta["reasoning_content"] = "abc " * thought
                    chunk = {
                        "id": "cmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": "fake",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    sent += 1
                done = {
                    "id": "cmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": "fake",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                yield f"data: {json.dumps(done)}\n\n".encode()
                if include_usage:
                    last = {**done, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            finally:
                self.running -= 1

        return StreamingResponse(events(), media_type="text/event-stream")


class Loopback:
    """An ASGI app served by uvicorn on 127.0.0.1 (a fixed port, kept across restarts)."""

    def __init__(self, app, port: int | None = None, server_class=None, grace: int = 5):
        self.app = app
        self.server_class = server_class or uvicorn.Server
        self.grace = grace
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Loopback:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="on",
            timeout_graceful_shutdown=self.grace,
        )
        self.server = self.server_class(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, force: bool = False) -> None:
        if self.server is not None:
            if hasattr(self.server, "begin_drain"):  # what the gateway's server does at SIGTERM
                self.server.begin_drain()
            self.server.should_exit = True
            if force:
                self.server.force_exit = True
        if self.thread is not None:
            self.thread.join(15)
        self.server = self.thread = None

    def __enter__(self) -> Loopback:
        return self if self.server is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    """`python tests/fake_engine.py PORT KIND TAU0 TAU1 SCALE REASON`: serve one engine."""
    import sys

    port, kind, tau0, tau1, scale, reason = sys.argv[1:7]
    engine = FakeEngine(kind, (float(tau0), float(tau1)), float(scale), reason=int(reason))
    uvicorn.run(engine.app, host="127.0.0.1", port=int(port), log_level="error")


if __name__ == "__main__":
    main()
