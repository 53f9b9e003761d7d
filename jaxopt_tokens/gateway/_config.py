"""The budget gateway's configuration: one TOML file, every key also a command-line flag.

Unknown keys and bad values are refused at start-up with the key (and the file) named.
Docs: *Budget gateway*.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .._errors import InputError
from .._files import read_text

__all__ = ["GatewayConfig", "TaskRule", "load_config", "ENGINES", "SMOOTHINGS"]

#: the engines whose budget fields the gateway writes (`export_policy`'s formats)
ENGINES = ("vllm", "sglang", "openai")
#: how the measured arrival rate and shares are smoothed
SMOOTHINGS = ("window", "ewma")


@dataclass(frozen=True)
class TaskRule:
    """A prompt rule: requests whose last user message matches `pattern` (a regular
    expression, searched) or starts with `prefix` are of task `task`."""

    task: str
    pattern: str | None = None
    prefix: str | None = None

    def matches(self, text: str) -> bool:
        if self.pattern is not None:
            return re.search(self.pattern, text) is not None
        return self.prefix is not None and text.startswith(self.prefix)


@dataclass(frozen=True)
class GatewayConfig:
    """Every setting of `jaxopt-tokens serve` (the TOML keys; flags are the same names with
    dashes).

    Attributes:
        upstream: the engine's base URL (`http://host:port`; `/v1/...` paths are appended).
        engine: whose budget fields to write: `vllm`, `sglang` or `openai` (`export_policy`).
        host, port: where the gateway listens.
        workload: the workload TOML/JSON (default: the packaged Table I workload).
        server: `mg1` (the single M/G/1 server) or `batching` (`ContinuousBatching`).
        step_time: `[tau0, tau1]` seconds of the batching server's decode step.
        max_batch: the batching server's running-set limit (None: unlimited).
        interval: seconds between re-solves.
        window: seconds of history behind the measured rate and shares (the half-life with
            `smoothing = "ewma"`).
        smoothing: `window` (a sliding window) or `ewma` (exponentially weighted).
        min_requests: requests seen in the window before the measurement drives the policy
            (until then the workload's rate and shares stand).
        min_gain: a new policy replaces the current one when its objective J at the measured
            load beats the current policy's by this fraction of |J| ...
        min_change: ... or when some task's budget moves by more than this fraction.
        learn_service: fit each task's service line `t0 + c * tokens` (or the batching
            server's step time) from the upstream's responses by recursive least squares.
        min_samples: responses per task before its fitted service line is used.
        target_latency: a mean latency target in seconds (single server only): the policy is
            then the most accurate one whose predicted mean latency meets it (`tune_alpha`),
            re-tuned at every measured load; when even zero budgets miss it, every budget is
            0 and the gateway says so. A policy is replaced when it misses the target at the
            new load by more than `min_gain`, or a budget moves by more than `min_change`.
        max_in_flight: requests in flight above which new ones get HTTP 429 (admission
            control: the gateway never queues without bound).
        retry_after: seconds in the `Retry-After` header of a 429.
        upstream_timeout: seconds to wait for the upstream (connect, and between bytes).
        max_body_bytes: the largest request body accepted (413 above).
        task_header: the header that names a request's task type.
        task_field: the key under the body's `metadata` that names it.
        models: a mapping model name -> task type.
        rules: prompt rules, in order (`[[rules]]` tables with `task` and `pattern` or
            `prefix`).
        default_task: the task of a request nothing else classifies (default: the first).
        classifier: `module:function` called with the request body, returning a task name
            or None (a learned classifier).
        override_client_budget: replace a budget the client sent (default: leave it).
        answer_reserve, min_budget, zero_budget: as in `export_policy`.
    """

    upstream: str
    engine: str = "vllm"
    host: str = "127.0.0.1"
    port: int = 8100
    workload: str | None = None
    server: str = "mg1"
    step_time: tuple[float, float] | None = None
    max_batch: int | None = None
    interval: float = 5.0
    window: float = 60.0
    smoothing: str = "window"
    min_requests: int = 50
    min_gain: float = 0.01
    min_change: float = 0.1
    learn_service: bool = True
    min_samples: int = 20
    target_latency: float | None = None
    max_in_flight: int = 256
    retry_after: int = 1
    upstream_timeout: float = 600.0
    max_body_bytes: int = 4 << 20
    task_header: str = "X-Task-Type"
    task_field: str = "task_type"
    models: dict[str, str] = field(default_factory=dict)
    rules: tuple[TaskRule, ...] = ()
    default_task: str | None = None
    classifier: str | None = None
    override_client_budget: bool = False
    answer_reserve: int = 256
    min_budget: int = 0
    zero_budget: str = "disable"

    def __post_init__(self):
        where = "upstream"
        url = urlparse(str(self.upstream))
        if url.scheme not in ("http", "https") or not url.netloc:
            raise InputError(
                f"{where}: an http(s) URL such as http://127.0.0.1:8000, got {self.upstream!r}"
            )
        _choice("engine", self.engine, ENGINES)
        _choice("server", self.server, ("mg1", "batching"))
        _choice("smoothing", self.smoothing, SMOOTHINGS)
        _choice("zero_budget", self.zero_budget, ("disable", "budget"))
        for name in ("interval", "window", "upstream_timeout"):
            _positive(name, getattr(self, name))
        for name in ("min_gain", "min_change"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf):
                raise InputError(f"{name}: a number >= 0, got {v!r}")
        for name, low in (
            ("port", 0),
            ("min_requests", 1),
            ("min_samples", 2),
            ("max_in_flight", 1),
            ("retry_after", 0),
            ("max_body_bytes", 1),
            ("answer_reserve", 0),
            ("min_budget", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"{name}: a whole number >= {low}, got {v!r}")
        if self.port > 65535:
            raise InputError(f"port: at most 65535, got {self.port}")
        if self.target_latency is not None:
            _positive("target_latency", self.target_latency)
            if self.server != "mg1":
                raise InputError("target_latency: a target for the single (mg1) server only")
        if self.server == "batching" and self.step_time is None:
            raise InputError("step_time: the batching server needs [tau0, tau1] (seconds)")
        if self.step_time is not None:
            st = self.step_time
            if (
                not isinstance(st, (list, tuple))
                or len(st) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in st)
                or not (st[0] >= 0 and st[1] > 0 and math.isfinite(st[0] + st[1]))
            ):
                raise InputError(f"step_time: [tau0 >= 0, tau1 > 0] in seconds, got {st!r}")
            object.__setattr__(self, "step_time", (float(st[0]), float(st[1])))
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool)
            or not isinstance(self.max_batch, int)
            or self.max_batch < 1
        ):
            raise InputError(f"max_batch: a whole number >= 1, got {self.max_batch!r}")
        if not isinstance(self.models, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.models.items()
        ):
            raise InputError("models: a table of model name = task name")
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, TaskRule):
                raise InputError(f"rules[{i}]: a table with task and pattern or prefix")
            if rule.pattern is not None:
                try:
                    re.compile(rule.pattern)
                except re.error as e:
                    raise InputError(
                        f"rules[{i}].pattern: not a regular expression ({e})"
                    ) from None
        if self.classifier is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.classifier):
            raise InputError(f"classifier: 'module:function', got {self.classifier!r}")

    def replace(self, **changes: Any) -> GatewayConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}: one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise InputError(f"{name}: a number > 0 (seconds), got {value!r}")


def _rules(value: Any, source: str) -> tuple[TaskRule, ...]:
    if not isinstance(value, list):
        raise InputError(f"{source}: rules: a list of tables ([[rules]] task = ..., pattern = ...)")
    out = []
    for i, r in enumerate(value):
        if not isinstance(r, dict) or not isinstance(r.get("task"), str):
            raise InputError(f"{source}: rules[{i}]: a table with a 'task' name")
        extra = sorted(set(r) - {"task", "pattern", "prefix"})
        if extra:
            raise InputError(f"{source}: rules[{i}]: unknown key(s) {extra}")
        if ("pattern" in r) == ("prefix" in r):
            raise InputError(f"{source}: rules[{i}]: give one of 'pattern' or 'prefix'")
        value_ = r.get("pattern", r.get("prefix"))
        if not isinstance(value_, str):
            raise InputError(f"{source}: rules[{i}]: the pattern or prefix must be a string")
        out.append(TaskRule(task=r["task"], pattern=r.get("pattern"), prefix=r.get("prefix")))
    return tuple(out)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> GatewayConfig:
    """A `GatewayConfig` from parsed TOML (or flags); unknown keys are refused by name."""
    names = {f.name for f in dataclasses.fields(GatewayConfig)}
    extra = sorted(set(data) - names)
    if extra:
        raise InputError(f"{source}: unknown key(s) {extra}; the keys are {sorted(names)}")
    values = dict(data)
    if "rules" in values:
        values["rules"] = _rules(values["rules"], source)
    if "step_time" in values and isinstance(values["step_time"], list):
        values["step_time"] = tuple(values["step_time"])
    if "upstream" not in values:
        raise InputError(f"{source}: missing key 'upstream' (the engine's URL)")
    try:
        return GatewayConfig(**values)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """The configuration in a TOML file, with `overrides` (from flags) on top."""
    text = read_text(path, "gateway configuration")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    return config_from_dict({**data, **(overrides or {})}, str(path))
