"""The budget gateway, measured: (a) its own overhead against a direct connection to the fake
engine; (b) a public production trace replayed through it in scaled time, the static policy
(solved once at the trace's mean rate) against the live one (re-solved from the load).

    PYTHONPATH=. python benchmarks/gateway.py [--requests 2000] [--minutes 10] [--speedup 10]

The fake engine (`tests/fake_engine.py`) and the gateway (`jaxopt-tokens serve`) run in their
own processes, as deployed; engine, gateway and clients share the machine's 2 cores.

(a) The fake engine answers at once (no generation time); one request at a time, 2000 through
the gateway and 2000 directly, interleaved in rounds; the added latency is the difference of
the percentiles. The sustained rate is that of 64 concurrent clients.

(b) The first `--minutes` of the Azure LLM inference trace 2023 (code; CC BY 4.0, see
benchmarks/data/traces/NOTICE.md), replayed `--speedup` times faster than recorded, each
request of a task drawn by the Table I shares (one seed). The fake engine batches
continuously, step time (20 ms + 0.5 ms x running) in real time (divided by the speedup), a
request's reasoning the smaller of 2,000 tokens and its budget, 20 answer tokens. Accuracy is
the workload's curve at the budget each request was sent with; latency is the client's, in
the trace's real time; J = alpha x accuracy - mean latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jax
import numpy as np
from rich.console import Console
from rich.table import Table

import jaxopt_tokens as jt

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "traces" / "AzureLLMInferenceTrace_code.csv"
STEP = (0.02, 0.0005)
BODY = {"model": "fake", "messages": [{"role": "user", "content": "reason=40"}]}
# the replay's requests carry no `reason=`: the engine's own reasoning length (2,000) applies,
# cut by the budget the gateway sends
REPLAY_BODY = {"model": "fake", "messages": [{"role": "user", "content": "a task"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process(argv: list[str], url: str):
    """A server in its own process (as deployed), up once `url/healthz` or `/v1/models`
    answers."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{argv[:4]} did not start: {proc.stderr.read().decode()[-2000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _engine(tau0: float, tau1: float, scale: float, reason: int):
    port = _free_port()
    argv = [
        sys.executable,
        "tests/fake_engine.py",
        str(port),
        "vllm",
        str(tau0),
        str(tau1),
        str(scale),
        str(reason),
    ]
    return _process(argv, f"http://127.0.0.1:{port}")


def _gateway(upstream: str, *flags: str):
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "jaxopt_tokens.cli",
        "serve",
        "--upstream",
        upstream,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *flags,
    ]
    return _process(argv, f"http://127.0.0.1:{port}")


async def _latencies(url: str, n: int, concurrency: int) -> np.ndarray:
    out: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:

        async def worker(k: int):
            for _ in range(k):
                t = time.perf_counter()
                r = await c.post(url + "/v1/chat/completions", json=BODY)
                r.raise_for_status()
                out.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return np.asarray(out)


def overhead(requests: int) -> dict:
    """Added latency of one request at a time, and the rate 64 clients sustain."""
    with (
        _engine(0.0, 0.0, 0.0, 40) as engine,
        _gateway(engine, "--interval", "3600", "--max-in-flight", "1024") as gw,
    ):
        asyncio.run(_latencies(gw, 200, 1))  # warm both paths
        asyncio.run(_latencies(engine, 200, 1))
        direct, through = [], []
        for _ in range(4):  # interleaved rounds: drift hits both alike
            direct.append(asyncio.run(_latencies(engine, requests // 4, 1)))
            through.append(asyncio.run(_latencies(gw, requests // 4, 1)))
        d, g = np.concatenate(direct), np.concatenate(through)
        t = time.perf_counter()
        n = asyncio.run(_latencies(gw, requests, 64)).size
        rate = n / (time.perf_counter() - t)
        t = time.perf_counter()
        n = asyncio.run(_latencies(engine, requests, 64)).size
        rate_direct = n / (time.perf_counter() - t)
    q = [50, 99]
    pd, pg = np.percentile(d, q), np.percentile(g, q)
    return {
        "direct p50 (ms)": 1e3 * pd[0],
        "direct p99 (ms)": 1e3 * pd[1],
        "through the gateway p50 (ms)": 1e3 * pg[0],
        "through the gateway p99 (ms)": 1e3 * pg[1],
        "added p50 (ms)": 1e3 * (pg[0] - pd[0]),
        "added p99 (ms)": 1e3 * (pg[1] - pd[1]),
        "sustained through the gateway (requests/s, 64 clients)": rate,
        "sustained direct (requests/s, 64 clients)": rate_direct,
    }


def _replay(
    trace: jt.traffic.Trace, w: jt.Workload, speedup: float, live: bool, tasks, tmp: Path
) -> dict:
    """Replay `trace` through a gateway (static or live policy) to the fake engine."""
    s = 1.0 / speedup
    # the gateway plans in the engine's (scaled) clock: times x s, rates / s, alpha x s
    with jax.enable_x64(True):
        ws = w.replace(t0=w.t0 * s, c=w.c * s, alpha=w.alpha * s, arrival_rate=trace.mean_rate / s)
        path = tmp / "workload.toml"
        jt.dump_workload(ws, path)
    flags = [
        "--workload",
        str(path),
        "--server",
        "batching",
        "--step-time",
        f"{STEP[0] * s!r},{STEP[1] * s!r}",
        "--no-learn-service",
        "--max-in-flight",
        "4096",
    ]
    if live:  # re-solve every 30 s of the trace's time from the last 2 minutes
        flags += ["--interval", repr(30.0 * s), "--window", repr(120.0 * s), "--min-requests", "20"]
    else:
        flags += ["--interval", "3600"]
    latency = np.zeros(len(trace))
    with _engine(STEP[0], STEP[1], s, 2000) as engine, _gateway(engine, *flags) as gw:

        async def run():
            limits = httpx.Limits(max_connections=4096)
            async with httpx.AsyncClient(timeout=600, limits=limits) as c:
                t0 = time.perf_counter()

                async def one(i: int):
                    due = trace.arrival_times[i] * s - (time.perf_counter() - t0)
                    await asyncio.sleep(max(0.0, due))
                    body = {**REPLAY_BODY, "metadata": {"task_type": w.task_names[tasks[i]]}}
                    t = time.perf_counter()
                    r = await c.post(gw + "/v1/chat/completions", json=body)
                    r.raise_for_status()
                    latency[i] = (time.perf_counter() - t) / s

                await asyncio.gather(*(one(i) for i in range(len(trace))))

        asyncio.run(run())
        versions = httpx.get(gw + "/policy").json()["gateway"]["version"]
        received = httpx.get(engine + "/received", timeout=60).json()
    return {"latency": latency, "versions": versions, "received": received}


def _accuracy(received: list[dict], w: jt.Workload) -> np.ndarray:
    """The workload's accuracy curve at each request's budget, as the engine received it."""
    out = []
    with jax.enable_x64(True):
        for body in received:
            k = w.task_names.index(body["metadata"]["task_type"])
            off = (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False
            budget = 0.0 if off else float(body.get("thinking_token_budget", -1))
            if budget < 0:  # no limit
                budget = float(w.max_tokens)
            l = np.zeros(w.num_tasks)
            l[k] = budget
            out.append(float(np.asarray(jt.task_accuracy(l, w))[k]))
    return np.asarray(out)


def trace_replay(minutes: float, speedup: float, seed: int = 0) -> list[dict]:
    trace = jt.traffic.read_trace(TRACE).between(0.0, minutes * 60.0)
    with jax.enable_x64(True):
        w = jt.default_workload("float64")
    share = np.asarray(w.share)
    tasks = np.random.default_rng(seed).choice(w.num_tasks, size=len(trace), p=share)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for live in (False, True):
            out = _replay(trace, w, speedup, live, tasks, Path(tmp))
            acc = _accuracy(out["received"], w)
            lat = out["latency"]
            rows.append(
                {
                    "policy": "live (re-solved)" if live else "static (mean rate)",
                    "requests": len(lat),
                    "accuracy": float(np.mean(acc)),
                    "mean latency (s)": float(np.mean(lat)),
                    "p95 latency (s)": float(np.percentile(lat, 95)),
                    "J": float(w.alpha) * float(np.mean(acc)) - float(np.mean(lat)),
                    "policy versions": out["versions"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speedup", type=float, default=10.0)
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    args = parser.parse_args()
    console = Console()
    if args.part in ("a", "all"):
        o = overhead(args.requests)
        t = Table(title="(a) the gateway's own overhead (fake engine answering at once)")
        t.add_column("measure")
        t.add_column("value", justify="right")
        for k, v in o.items():
            t.add_row(k, f"{v:.3g}")
        console.print(t)
    if args.part == "a":
        return
    rows = trace_replay(args.minutes, args.speedup)
    t = Table(title=f"(b) Azure code trace, first {args.minutes:g} min, {args.speedup:g}x faster")
    for col in rows[0]:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()))
    console.print(t)


if __name__ == "__main__":
    main()
