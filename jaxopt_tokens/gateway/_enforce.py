"""Whether the engine kept the budgets it was sent, judged from its responses.

Each response's reasoning tokens come from its usage (`completion_tokens_details.
reasoning_tokens`, the OpenAI field vLLM, SGLang and Dynamo fill) or, where the engine does
not count them (llama.cpp), are estimated from the reasoning text it returns
(`reasoning_content` or `reasoning`, at `CHARS_PER_TOKEN` characters a token: an estimate,
judged with a margin). A response whose reasoning exceeds the budget sent by more than the
tolerance is a violation: counted per task, logged once per task, shown on `/policy`.
Docs: *Budget gateway* (Enforcement).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Any

__all__ = [
    "Enforcement",
    "judge",
    "usage_counts",
    "reasoning_text_chars",
    "CHARS_PER_TOKEN",
    "ESTIMATE_MARGIN",
]

#: characters of reasoning text a token, for engines that do not count reasoning tokens
CHARS_PER_TOKEN = 4.0
#: an estimated count is a violation only above the budget times this (plus the tolerance)
ESTIMATE_MARGIN = 1.25

log = logging.getLogger("jaxopt_tokens.gateway")


def usage_counts(payload: Any) -> tuple[int, int | None] | None:
    """(completion tokens, reasoning tokens or None) from a response's `usage`.

    Args:
        payload: a parsed response or stream chunk.

    Returns:
        The counts, or None without a `usage`.
    """
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    n = usage.get("completion_tokens")
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    details = usage.get("completion_tokens_details")
    r = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return n, r if isinstance(r, int) and not isinstance(r, bool) else None


def reasoning_text_chars(payload: Any) -> int:
    """Characters of reasoning text in a response or stream chunk (`message` or `delta`
    `reasoning_content` / `reasoning` of each choice).

    Args:
        payload: a parsed response or stream chunk.

    Returns:
        The characters.
    """
    if not isinstance(payload, dict):
        return 0
    total = 0
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        for part in (choice.get("message"), choice.get("delta")):
            if isinstance(part, dict):
                for key in ("reasoning_content", "reasoning"):
                    text = part.get(key)
                    if isinstance(text, str):
                        total += len(text)
                        break
    return total


def judge(
    budget: float, reasoning: int | None, text_chars: int, tolerance: int
) -> tuple[int | None, bool, str]:
    """(reasoning tokens used, whether estimated from text, verdict) of one response sent
    `budget` (0: thinking off): `"violation"` above the budget plus `tolerance` (an
    estimate: times `ESTIMATE_MARGIN`), `"kept"`, or `"unmeasured"` when the response has
    neither a count nor reasoning text.

    Args:
        budget: the budget sent.
        reasoning: the reasoning tokens the engine counted, or None.
        text_chars: characters of reasoning text, for an estimate.
        tolerance: tokens above the budget still counted as kept.

    Returns:
        `(reasoning tokens, estimated, verdict)`.
    """
    if reasoning is None and text_chars <= 0:
        return None, False, "unmeasured"
    estimated = reasoning is None
    used = math.ceil(text_chars / CHARS_PER_TOKEN) if estimated else int(reasoning or 0)
    limit = budget * (ESTIMATE_MARGIN if estimated else 1.0) + tolerance
    return used, estimated, "violation" if used > limit else "kept"


class Enforcement:
    """Per task: responses checked, not measurable, violations, and the reasoning seen."""

    def __init__(self, tasks: tuple[str, ...], tolerance: int, metrics: Any, judged: bool = True):
        self.tolerance = tolerance
        self.judged = judged  # False where the budget is an effort level (openai)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._stats = {
            t: {
                "checked": 0,
                "unmeasured": 0,
                "violations": 0,
                "estimated": 0,
                "max_reasoning": 0,
                "reasoning_total": 0,
                "last_budget": None,
            }
            for t in tasks
        }
        self._warned: set[str] = set()

    def record(
        self, task: str, budget: float, reasoning: int | None, text_chars: int
    ) -> str | None:
        """Judge one response of `task` sent `budget` reasoning tokens (0: thinking off):
        `reasoning` from usage, else estimated from `text_chars`. Returns `"violation"`,
        `"kept"` or None (not measurable)."""
        if not self.judged:
            return None
        used, estimated, verdict = judge(budget, reasoning, text_chars, self.tolerance)
        with self._lock:
            s = self._stats[task]
            s["last_budget"] = budget
            if used is None:
                s["unmeasured"] += 1
                self.metrics.unmeasured.labels(task).inc()
                return None
            s["checked"] += 1
            s["estimated"] += estimated
            s["max_reasoning"] = max(s["max_reasoning"], used)
            s["reasoning_total"] += used
            self.metrics.reasoning.labels(task).observe(used)
            if verdict == "kept":
                return "kept"
            s["violations"] += 1
            self.metrics.violations.labels(task).inc()
            first = task not in self._warned
            self._warned.add(task)
        if first:
            log.warning(
                json.dumps(
                    {
                        "event": "budget_not_enforced",
                        "task": task,
                        "budget": budget,
                        "reasoning_tokens": used,
                        "counted_from": "estimate from reasoning text" if estimated else "usage",
                        "hint": "the engine accepted the budget and did not keep it (see the "
                        "docs' engine table: speculative decoding, templates without think tags)",
                    }
                )
            )
        return "violation"

    def report(self) -> dict[str, dict[str, Any]]:
        """Per task: budget last sent, responses checked (estimated among them), not
        measurable, violations, mean and largest reasoning tokens."""
        with self._lock:
            out = {}
            for task, s in self._stats.items():
                n = s["checked"]
                out[task] = {
                    "budget": s["last_budget"],
                    "checked": n,
                    "estimated": s["estimated"],
                    "unmeasured": s["unmeasured"],
                    "violations": s["violations"],
                    "mean_reasoning": s["reasoning_total"] / n if n else None,
                    "max_reasoning": s["max_reasoning"] if n else None,
                }
            return out
