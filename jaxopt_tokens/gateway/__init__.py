"""The budget gateway: budgets that follow the load, live.

An OpenAI-compatible HTTP proxy for a vLLM, SGLang or OpenAI-compatible engine. It decides
each request's task type, writes that task's reasoning budget into the request (the fields
`export_policy` writes), measures the arrival rate, the task shares and the service times
from the traffic it relays, and every few seconds re-solves the optimal budgets off the event
loop and swaps the policy atomically. Command: `jaxopt-tokens serve`. The HTTP stack
(Starlette, uvicorn, httpx, prometheus_client) is the optional extra `jaxopt_tokens[serve]`;
this namespace imports it only when an app is built. Docs: *Budget gateway*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import InputError
from ._config import (
    ENGINES,
    SMOOTHINGS,
    GatewayConfig,
    TaskRule,
    config_from_dict,
    load_config,
    read_secret,
    redact,
)
from ._enforce import judge, reasoning_text_chars, usage_counts
from ._learned import QUEUE_METRICS, LearnedTable, engine_queue, load_learned

if TYPE_CHECKING:
    from ._dryrun import DryRun

__all__ = [
    "GatewayConfig",
    "TaskRule",
    "load_config",
    "config_from_dict",
    "create_app",
    "dry_run",
    "LearnedTable",
    "load_learned",
    "engine_queue",
    "QUEUE_METRICS",
    "judge",
    "usage_counts",
    "reasoning_text_chars",
    "check_address",
    "serve",
    "run",
    "redact",
    "read_secret",
    "ENGINES",
    "SMOOTHINGS",
]


def _require_serve_extra() -> None:
    missing = []
    for module in ("starlette", "uvicorn", "httpx", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InputError(
            f"the gateway needs {', '.join(missing)}: pip install 'jaxopt_tokens[serve]'"
        )


def create_app(config: GatewayConfig, workload: Any = None, model: Any = None) -> Any:
    """The gateway's ASGI application for `config` (workload and model from the
    configuration unless given: `config.workload` or the packaged default; `FIFO()` or
    `ContinuousBatching(step_time, max_batch)` by `config.server`).

    Args:
        config: the checked configuration.
        workload: the workload (default: the configuration's).
        model: the latency model (default: the configuration's server).

    Returns:
        The Starlette application.
    """
    _require_serve_extra()
    from ._app import Gateway, build_app
    from ._control import Controller

    workload, model, learned = _components(config, workload, model)
    if config.request_log is not None:
        _check_log(config.request_log)
    return build_app(Gateway(config, Controller(config, workload, model, learned)))


def dry_run(
    config: GatewayConfig,
    trace: Any,
    workload: Any = None,
    model: Any = None,
    **options: Any,
) -> DryRun:
    """Replay `trace` through the gateway's control loop in simulated time, without HTTP
    (`DryRun`: the summary, every request, every control step). The workload, model and
    learned table come from `config` as for `create_app`; `options` are those of the
    dry run (`learned` to serve a table not in a file, `tasks`, `seed`, `reasoning`,
    `answer_tokens`, `prefill_tokens`). Needs no HTTP stack.

    Args:
        config: the checked configuration.
        trace: the `Trace` replayed.
        workload: the workload (default: the configuration's).
        model: the latency model (default: the configuration's server).
        **options: the dry run's options (above).

    Returns:
        The `DryRun`.
    """
    from ._dryrun import dry_run as run_dry

    workload, model, learned = _components(config, workload, model)
    options.setdefault("learned", learned)
    return run_dry(config, workload, model, trace, **options)


def _components(config: GatewayConfig, workload: Any, model: Any):
    """(workload, model, learned table or None) of `config`, each checked."""
    import jax
    import numpy as np

    from .._io import default_workload, load_workload
    from .._queue.batching import ContinuousBatching
    from .._queue.models import FIFO

    if workload is None:
        with jax.enable_x64(True):  # the gateway computes in float64, without a global switch
            workload = (
                load_workload(config.workload, "float64", server=config.server)
                if config.workload
                else default_workload("float64")
            )
    if model is None:
        model = (
            FIFO()
            if config.server == "mg1"
            else ContinuousBatching(
                step_time=config.step_time or (0.0, 0.0), max_batch=config.max_batch
            )
        )
    named = [("default_task", config.default_task)]
    named += [(f"models.{m}", t) for m, t in config.models.items()]
    named += [(f"rules[{i}].task", r.task) for i, r in enumerate(config.rules)]
    for key, name in named:
        if name is not None and name not in workload.task_names:
            raise InputError(
                f"{key}: {name!r} is not a task of the workload ({', '.join(workload.task_names)})"
            )
    learned = None
    if config.learned_policy is not None:
        from ._learned import load_learned

        try:
            learned = load_learned(
                config.learned_policy, workload.task_names, np.asarray(workload.max_tokens)
            )
        except InputError as e:
            raise InputError(f"learned_policy: {e}") from None
    return workload, model, learned


def _check_log(path: str) -> None:
    """Refuse (naming `request_log`) a log that cannot be appended to."""
    import os
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_file():
        raise InputError(f"request_log: {path} exists and is not a file")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"request_log: the folder {folder} does not exist")
    if not os.access(p if p.exists() else folder, os.W_OK):
        raise InputError(f"request_log: {path} is not writable")


def check_address(config: GatewayConfig, bind: bool = True) -> None:
    """Refuse (`InputError` naming the flag) a host that does not resolve, or, with `bind`,
    an address that cannot be bound (in use, or not this machine's).

    Args:
        config: the configuration (`host`, `port`).
        bind: also try to bind the address.
    """
    import socket

    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise InputError(f"--host {config.host}: cannot resolve it ({e})") from None
    if not bind:
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            why = "address already in use" if e.errno == 98 else e.strerror or str(e)
            raise InputError(f"--port {config.port}: {config.host}:{config.port}: {why}") from None


def serve(app: Any, config: GatewayConfig, server_class: Any = None) -> None:
    """Serve `app` on `config.host:config.port` until SIGINT/SIGTERM (uvicorn); in-flight
    requests finish first, and streams still open after `shutdown_grace` seconds end with
    an SSE `error` event; a clean drain exits with status 0.

    Args:
        app: the ASGI application.
        config: the configuration (address, limits, grace).
        server_class: the uvicorn server class (for tests).
    """
    _require_serve_extra()
    import uvicorn

    uconfig = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=int(config.shutdown_grace) + 5,
        timeout_keep_alive=5,
        # no connection limit: uvicorn's would count idle sockets, so a client holding them
        # could refuse everyone (503); the gateway's own admission bounds the requests
    )
    server = (server_class or _server_class())(uconfig)
    server.run()


def run(app: Any, config: GatewayConfig) -> None:
    """`serve`, the command's entry point.

    Args:
        app: the ASGI application.
        config: the configuration.
    """
    serve(app, config)


def _server_class():
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server that, at SIGINT/SIGTERM, starts the gateway's drain (streams
        cut after `shutdown_grace` with an SSE error event) and exits 0 after it."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a clean drain is a normal exit, not a signal
            self.begin_drain()

        def begin_drain(self) -> None:
            state = getattr(self.config.app, "state", None)
            gateway = getattr(state, "gateway", None)
            if gateway is not None:
                gateway.begin_drain()

    return _Server


def __getattr__(name: str):
    if name == "Server":  # uvicorn is imported only when the server is asked for
        _require_serve_extra()
        return _server_class()
    raise AttributeError(name)
