"""The names a user chooses among, and the defaults the command line shows: plain data.

Solvers, servers, export engines and trace formats are spelled here once. The modules that
act on a choice import it from here, and the command line builds its parser from here
without loading JAX (`--help` and a mistyped flag answer at once).
"""

from __future__ import annotations

__all__ = [
    "SOLVER_NAMES",
    "DISCIPLINES",
    "ROUTINGS",
    "DEFAULT_ANSWER_TOKENS",
    "SERVICES",
    "TASK_SOURCES",
    "TRACE_FORMATS",
    "TIME_UNITS",
    "EXPORT_FORMATS",
    "ROUNDINGS",
    "DEFAULT_ANSWER_RESERVE",
    "DEFAULT_EFFORT_BOUNDS",
    "SGLANG_PROCESSORS",
]

#: the method names `solve` takes as shorthand for a solver instance
SOLVER_NAMES = ("default", "fixed-point", "pga", "pga-safeguarded")
#: the single-server disciplines the single-server simulator runs (`LatencyModel.discipline`)
DISCIPLINES = ("fifo", "priority", "ps")
#: how arrivals pick a replica of a continuously batching server
ROUTINGS = ("random", "shortest_queue", "least_loaded")
#: decode steps of the visible answer (the export's reserve)
DEFAULT_ANSWER_TOKENS = 256.0

#: where a replayed request's work comes from
SERVICES = ("tasks", "trace")
#: where a replayed request's task type comes from
TASK_SOURCES = ("shares", "trace")
#: the formats `read_trace` reads (`"auto"` chooses among them from the file)
TRACE_FORMATS = ("azure", "mooncake", "burstgpt", "csv", "jsonl")
#: how a numeric time column is read: seconds, milliseconds or microseconds
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}

#: the engines (and plain JSON) `export_policy` writes for
EXPORT_FORMATS = ("vllm", "sglang", "dynamo", "llamacpp", "openai", "json")
#: how continuous budgets become integers
ROUNDINGS = ("integer", "ceil", "round")
#: output tokens kept for the visible answer on top of the reasoning budget
DEFAULT_ANSWER_RESERVE = 256
#: the largest budget each `reasoning_effort` level stands for
DEFAULT_EFFORT_BOUNDS: dict[str, int] = {"low": 1024, "medium": 8192}
#: SGLang's built-in thinking-budget logit processors (module, class), by model family;
#: "strict" sends none (the server's grammar backend enforces the budget)
SGLANG_PROCESSORS: dict[str, tuple[str, str] | None] = {
    "qwen3": ("sglang.srt.sampling.custom_logit_processor", "Qwen3ThinkingBudgetLogitProcessor"),
    "deepseek-r1": (
        "sglang.srt.sampling.custom_logit_processor",
        "DeepSeekR1ThinkingBudgetLogitProcessor",
    ),
    "strict": None,
}
