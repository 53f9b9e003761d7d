"""The budget gateway's configuration: one TOML file, every key also a command-line flag.

Unknown keys and bad values are refused at start-up with the key (and the file) named.
Docs: *Budget gateway*.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from .._errors import InputError
from .._files import read_text
from ._learned import QUEUE_METRICS

__all__ = [
    "GatewayConfig",
    "TaskRule",
    "load_config",
    "config_from_dict",
    "import_classifier",
    "read_secret",
    "redact",
    "ENGINES",
    "SMOOTHINGS",
    "QUEUE_SOURCES",
    "OWN_ROUTES",
    "UNBUDGETED_GENERATION",
]

#: the engines whose budget fields the gateway writes (`export_policy`'s formats)
ENGINES = ("vllm", "sglang", "dynamo", "llamacpp", "openai")
#: where the queue state a learned policy reads comes from
QUEUE_SOURCES = ("gateway", "engine")
#: how the measured arrival rate and shares are smoothed
SMOOTHINGS = ("window", "ewma")
#: the gateway's own routes (budgeted or its own endpoints): never a pass-through route
OWN_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/metrics",
    "/policy",
    "/healthz",
    "/readyz",
)
#: the engines' generation routes that the gateway does not budget: never passed through
UNBUDGETED_GENERATION = (
    "/v1/responses",
    "/v1/messages",
    "/generate",
    "/invocations",
    "/v1/chat/completions/render",
    "/v1/completions/render",
    "/inference",
    "/v1/audio",
    "/v1/realtime",
)


@dataclass(frozen=True)
class TaskRule:
    """A prompt rule: requests whose last user message matches `pattern` (a regular
    expression, searched) or starts with `prefix` are of task `task`.

    Attributes:
        task: the task type the rule assigns.
        pattern: a regular expression searched in the last user message.
        prefix: a prefix of the last user message.
    """

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
    dashes). Each value is checked against its type and range at construction.

    Attributes:
        upstream: the engine's base URL (`http://host:port`; `/v1/...` paths are appended).
        engine: whose budget fields to write: `vllm`, `sglang`, `dynamo`, `llamacpp` or
            `openai` (`export_policy`).
        host: the address the gateway listens on (default 127.0.0.1).
        port: the port it listens on (default 8100).
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
        min_change: ... or when some task's budget moves by more than this fraction of its
            current value and by more than `min_move` tokens.
        min_move: the smallest budget move, in tokens, that counts as a change.
        min_evidence: the policy is re-solved only when the measured load differs from the
            one it was solved at by this many standard deviations of Poisson counting noise
            (the rate's z-score, or the shares' standardised chi-square), or the fitted
            service moved by `min_change`: a steady load does not move the budgets.
        target_band: with `target_latency`, the current policy stands while its predicted
            mean latency at the measured load is within this fraction above the target.
        learn_service: fit each task's service line `t0 + c * reasoning tokens` (single
            server: from the departures, so the queue wait is not service) or the batching
            server's step time (against the mean number in flight over each request).
        min_samples: responses per task before its fitted service line is used.
        target_latency: a mean latency target in seconds (single server only): the policy is
            then the most accurate one whose predicted mean latency meets it (`tune_alpha`),
            re-tuned at every measured load; when even zero budgets miss it, every budget is
            0 and the gateway says so.
        max_in_flight: requests in flight above which new ones get HTTP 429 (admission
            control: the gateway never queues without bound).
        retry_after: seconds in the `Retry-After` header of a 429.
        upstream_timeout: seconds to wait for the upstream (connect, and between bytes).
        max_body_bytes: the largest request body accepted (413 above).
        max_choices: the largest `n` (or `best_of`) a request may ask for.
        task_header: the header that names a request's task type.
        task_field: the key under the body's `metadata` that names it.
        models: a mapping model name -> task type.
        rules: prompt rules, in order (`[[rules]]` tables with `task` and `pattern` or
            `prefix`).
        default_task: the task of a request nothing else classifies (default: the first).
        classifier: `module:function` called with the request body, returning a task name
            or None (a learned classifier); imported when the configuration is checked.
        override_client_budget: the policy's budget replaces a client's lower one (by
            default a client may lower its budget; it can never raise it).
        trust_client_task: take the task a client names (the `task_header` header,
            `metadata.task_field`); False when clients are untrusted: a client could otherwise
            claim the task with the largest budget, and steer the measured shares.
        api_key: the key clients must send (`Authorization: Bearer ...`) on the budgeted and
            pass-through routes; `env:NAME` reads it from the environment variable NAME.
        admin_key: the key for `/policy` and `/metrics` (same forms).
        upstream_key: the key the gateway sends to the engine (same forms); a client's own
            `Authorization` is never forwarded when a gateway key is set.
        passthrough: GET routes forwarded to the engine unchanged (and the paths below them).
        allow_fields: body fields forwarded beyond the engine's allow-list (never one the
            gateway refuses: see the docs' security model).
        ready_path: the upstream path `/readyz` probes (ready when it answers 200).
        shutdown_grace: seconds in-flight streams get at shutdown before they end with an
            SSE `error` event.
        answer_reserve: as in `export_policy`: output tokens kept for the answer.
        min_budget: as in `export_policy`: the smallest positive budget sent.
        zero_budget: as in `export_policy`: what a budget of 0 sends (`disable` or `budget`).
        learned_policy: a policy file of `jaxopt-tokens learn -o` (budgets by task and by
            the requests an arrival finds in the system): served as it is, row by row at
            each request's queue state, and not re-solved.
        queue_source: where the queue state comes from: `gateway` (its own requests in
            flight) or `engine` (the engine's running plus waiting requests from its
            Prometheus metrics: one view shared by every gateway replica in front of it).
        engine_metrics_path: the engine's Prometheus path (with `queue_source = "engine"`).
        engine_metrics_interval: seconds between two reads of it; a reading older than
            five intervals (or none) falls back to the gateway's own count.
        request_log: a JSON Lines file each request is appended to (arrival time, task,
            outcome, latency, tokens, queue state, budget): a trace `jaxopt-tokens learn`
            reads, to re-learn the policy on the gateway's own traffic.
        budget_tolerance: reasoning tokens a response may exceed its budget by before it
            counts as a violation (end-of-thinking tags, a processor's last newline).
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
    min_move: int = 32
    min_evidence: float = 3.0
    target_band: float = 0.05
    learn_service: bool = True
    min_samples: int = 20
    target_latency: float | None = None
    max_in_flight: int = 256
    retry_after: int = 1
    upstream_timeout: float = 600.0
    max_body_bytes: int = 4 << 20
    max_choices: int = 1
    task_header: str = "X-Task-Type"
    task_field: str = "task_type"
    models: dict[str, str] = field(default_factory=dict)
    rules: tuple[TaskRule, ...] = ()
    default_task: str | None = None
    classifier: str | None = None
    override_client_budget: bool = False
    trust_client_task: bool = True
    api_key: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    upstream_key: str | None = field(default=None, repr=False)
    passthrough: tuple[str, ...] = ("/v1/models",)
    allow_fields: tuple[str, ...] = ()
    ready_path: str = "/v1/models"
    shutdown_grace: float = 25.0
    answer_reserve: int = 256
    min_budget: int = 0
    zero_budget: str = "disable"
    learned_policy: str | None = None
    queue_source: str = "gateway"
    engine_metrics_path: str = "/metrics"
    engine_metrics_interval: float = 0.5
    request_log: str | None = None
    budget_tolerance: int = 8

    def __post_init__(self):
        _check_types(self)
        _check_upstream(self.upstream)
        _check_host(self.host)
        _choice("engine", self.engine, ENGINES)
        _choice("server", self.server, ("mg1", "batching"))
        _choice("smoothing", self.smoothing, SMOOTHINGS)
        _choice("zero_budget", self.zero_budget, ("disable", "budget"))
        _choice("queue_source", self.queue_source, QUEUE_SOURCES)
        for name in (
            "interval",
            "window",
            "upstream_timeout",
            "shutdown_grace",
            "engine_metrics_interval",
        ):
            _positive(name, getattr(self, name))
        for name in ("min_gain", "min_change", "target_band", "min_evidence"):
            v = float(getattr(self, name))
            if not (0 <= v < math.inf):
                raise InputError(f"{name}: a number >= 0, got {getattr(self, name)!r}")
        for name, low in (
            ("port", 0),
            ("min_requests", 1),
            ("min_samples", 2),
            ("min_move", 0),
            ("max_in_flight", 1),
            ("retry_after", 0),
            ("max_body_bytes", 1),
            ("max_choices", 1),
            ("answer_reserve", 0),
            ("min_budget", 0),
            ("budget_tolerance", 0),
        ):
            if getattr(self, name) < low:
                raise InputError(f"{name}: a whole number >= {low}, got {getattr(self, name)!r}")
        if self.port > 65535:
            raise InputError(f"port: at most 65535, got {self.port}")
        for name in ("workload", "learned_policy", "request_log"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise InputError(f"{name}: a file path, got an empty string")
        if self.queue_source == "engine" and self.engine not in QUEUE_METRICS:
            raise InputError(
                f"queue_source: engine {self.engine!r} publishes no queue metrics (the "
                f"engines that do: {', '.join(QUEUE_METRICS)})"
            )
        if self.learned_policy is not None and self.target_latency is not None:
            raise InputError(
                "target_latency: a learned_policy is served as learned, not tuned to a "
                "target (set one of them)"
            )
        if self.target_latency is not None:
            _positive("target_latency", self.target_latency)
            if self.server != "mg1":
                raise InputError("target_latency: a target for the single (mg1) server only")
        if self.server == "batching" and self.step_time is None:
            raise InputError("step_time: the batching server needs [tau0, tau1] (seconds)")
        if self.server != "batching":
            for name in ("step_time", "max_batch"):
                if getattr(self, name) is not None:
                    raise InputError(
                        f'{name} describes a batching server: set server = "batching" '
                        "(or remove it)"
                    )
        if self.step_time is not None:
            st = self.step_time
            if (
                not isinstance(st, (list, tuple))
                or len(st) != 2
                or not all(_real(x) for x in st)
                or not (float(st[0]) >= 0 and float(st[1]) > 0)
            ):
                raise InputError(f"step_time: [tau0 >= 0, tau1 > 0] in seconds, got {st!r}")
            object.__setattr__(self, "step_time", (float(st[0]), float(st[1])))
        if self.max_batch is not None and self.max_batch < 1:
            raise InputError(f"max_batch: a whole number >= 1, got {self.max_batch!r}")
        _check_names(self)
        if self.classifier is not None:
            import_classifier(self.classifier)
        for name in ("api_key", "admin_key", "upstream_key"):
            object.__setattr__(self, name, read_secret(name, getattr(self, name)))
        _check_routes(self.passthrough, self.ready_path)
        if not re.fullmatch(r"(/[\w.~-]+)+", self.engine_metrics_path):
            raise InputError(
                f"engine_metrics_path: a path such as /metrics, got {self.engine_metrics_path!r}"
            )
        from ._request import REFUSED_FIELDS  # the allow-list's refusals

        bad = sorted(set(self.allow_fields) & set(REFUSED_FIELDS))
        if bad:
            raise InputError(
                f"allow_fields: {bad[0]} is never forwarded ({REFUSED_FIELDS[bad[0]]})"
            )

    def replace(self, **changes: Any) -> GatewayConfig:
        return dataclasses.replace(self, **changes)


def _real(x: Any) -> bool:
    """A finite real number (not a bool; an integer too large for a float is not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _type_ok(value: Any, kind: Any) -> bool:
    """Whether `value` is of the (simple) annotated type `kind`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return _real(value)
    if kind is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
    if origin is dict:
        kt, vt = typing.get_args(kind)
        return isinstance(value, dict) and all(
            _type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items()
        )
    return isinstance(value, kind)


_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _describe(kind: Any) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return _describe(args[0])
    if typing.get_origin(kind) is tuple:
        return "a list"
    if typing.get_origin(kind) is dict:
        return "a table of names"
    return _WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _check_types(config: GatewayConfig) -> None:
    """Every field against its annotation (the one source of each setting's type)."""
    hints = typing.get_type_hints(GatewayConfig)
    for f in dataclasses.fields(GatewayConfig):
        value = getattr(config, f.name)
        if not _type_ok(value, hints[f.name]):
            shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
            raise InputError(f"{f.name}: {_describe(hints[f.name])}, got {shown}")
        if isinstance(value, list):  # TOML arrays become tuples
            object.__setattr__(config, f.name, tuple(value))


def _check_upstream(upstream: str) -> None:
    try:
        url = urlparse(upstream)
        port = url.port
    except ValueError as e:
        raise InputError(f"upstream: not a valid URL ({e})") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InputError(
            f"upstream: an http(s) URL such as http://127.0.0.1:8000, got {redact(upstream)!r}"
        )
    if port is not None and not 0 < port < 65536:
        raise InputError(f"upstream: port {port} is not in 1-65535")


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


def _check_host(host: str) -> None:
    with_ip = host.strip("[]")
    try:
        ipaddress.ip_address(with_ip)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+", host) or not _HOSTNAME.fullmatch(host):
        raise InputError(f"host: an IP address or host name, got {host!r}")


_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _check_names(config: GatewayConfig) -> None:
    if not _HEADER.fullmatch(config.task_header):
        raise InputError(f"task_header: an HTTP header name, got {config.task_header!r}")
    if not config.task_field:
        raise InputError("task_field: a key name, got an empty string")
    for i, rule in enumerate(config.rules):
        if rule.pattern is not None:
            try:
                re.compile(rule.pattern)
            except re.error as e:
                raise InputError(f"rules[{i}].pattern: not a regular expression ({e})") from None


def _check_routes(passthrough: tuple[str, ...], ready_path: str) -> None:
    for i, path in enumerate(passthrough):
        where = f"passthrough[{i}]"
        if not re.fullmatch(r"(/[\w.~-]+)+", path):
            raise InputError(f"{where}: a path such as /v1/models, got {path!r}")
        for route in (*OWN_ROUTES, *UNBUDGETED_GENERATION):
            if path == route or path.startswith(route + "/") or route.startswith(path + "/"):
                why = "the gateway's own" if route in OWN_ROUTES else "a generation route the "
                why += "" if route in OWN_ROUTES else "gateway does not budget"
                raise InputError(f"{where}: {path} overlaps {route} ({why})")
    if not re.fullmatch(r"(/[\w.~-]+)+", ready_path):
        raise InputError(f"ready_path: a path such as /health, got {ready_path!r}")


def read_secret(name: str, value: str | None, min_length: int = 8) -> str | None:
    """A key, or the environment variable an `env:NAME` value names; `InputError` naming
    `name` when the variable is unset, or the key is shorter than `min_length` or has spaces.

    Args:
        name: the setting's name, for messages.
        value: the key, `env:NAME`, or None.
        min_length: the shortest key accepted.

    Returns:
        The key, or None when `value` is None.
    """
    if value is None:
        return None
    if value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise InputError(f"{name}: the environment variable {var} is not set")
        value = os.environ[var]
    if len(value) < min_length or any(c.isspace() for c in value):
        raise InputError(f"{name}: at least {min_length} characters without spaces")
    return value


def import_classifier(spec: str) -> Callable[[dict], str | None]:
    """The function `module:function` names; `InputError` naming `classifier` otherwise."""
    if not re.fullmatch(r"[\w.]+:[\w.]+", spec):
        raise InputError(f"classifier: 'module:function', got {spec!r}")
    module, _, name = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import fault is the setting's
        raise InputError(f"classifier: cannot import {module} ({type(e).__name__})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise InputError(f"classifier: {module} has no {name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"classifier: {spec} is not callable")
    return typing.cast(Callable[[dict], "str | None"], obj)


def redact(url: str) -> str:
    """`url` without its user name and password (for messages and logs).

    Args:
        url: a URL.

    Returns:
        The URL without credentials.
    """
    try:
        parts = urlparse(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunparse(parts._replace(netloc="***@" + netloc))
    except ValueError:
        return "<upstream>"


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}: one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: Any) -> None:
    if not (_real(value) and float(value) > 0):
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
    """A `GatewayConfig` from parsed TOML (or flags); unknown keys are refused by name.

    Args:
        data: the settings, by key.
        source: the name errors give for them (a file name).

    Returns:
        The checked `GatewayConfig`.
    """
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
    """The configuration in a TOML file, with `overrides` (from flags) on top.

    Args:
        path: the TOML file.
        overrides: settings that replace the file's (from flags).

    Returns:
        The checked `GatewayConfig`.
    """
    text = read_text(path, "gateway configuration")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    return config_from_dict({**data, **(overrides or {})}, str(path))
