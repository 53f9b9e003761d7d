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

from typing import Any

from .._errors import InputError
from ._config import ENGINES, SMOOTHINGS, GatewayConfig, TaskRule, config_from_dict, load_config

__all__ = [
    "GatewayConfig",
    "TaskRule",
    "load_config",
    "config_from_dict",
    "create_app",
    "run",
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


def create_app(config: GatewayConfig, workload: Any = None, model: Any = None):
    """The gateway's ASGI application for `config` (workload and model from the
    configuration unless given: `config.workload` or the packaged default; `FIFO()` or
    `ContinuousBatching(step_time, max_batch)` by `config.server`)."""
    _require_serve_extra()
    import jax

    from .._io import default_workload, load_workload
    from .._queue.batching import ContinuousBatching
    from .._queue.models import FIFO
    from ._app import Gateway, build_app
    from ._control import Controller

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
    for name in (config.default_task, *config.models.values(), *(r.task for r in config.rules)):
        if name is not None and name not in workload.task_names:
            raise InputError(
                f"task {name!r} in the configuration is not a task of the workload "
                f"({', '.join(workload.task_names)})"
            )
    return build_app(Gateway(config, Controller(config, workload, model)))


def run(app, config: GatewayConfig) -> None:
    """Serve `app` with uvicorn on `config.host:config.port` until SIGINT/SIGTERM; in-flight
    requests finish first (up to 30 s)."""
    _require_serve_extra()
    import uvicorn

    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
        limit_concurrency=config.max_in_flight * 4 + 64,
    )
