"""Recorded traffic: reading production request traces (`read_trace`, `Trace`), replaying them
(`Replay`, a setting of `simulate`), measuring how bursty they are, and planning budgets over
their windows (`plan_windows`). Docs: *Real traffic*.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._choices import SERVICES, TASK_SOURCES, TIME_UNITS, TRACE_FORMATS
    from ._deploy.windows import WindowPlan, plan_windows
    from ._traffic.replay import Replay
    from ._traffic.stats import (
        DISPERSION_WINDOWS,
        ArrivalStats,
        TrafficWarning,
        arrival_scv,
        arrival_stats,
        plot_arrivals,
    )
    from ._traffic.trace import Trace, read_trace

__all__ = [
    "Trace",
    "read_trace",
    "Replay",
    "TRACE_FORMATS",
    "TIME_UNITS",
    "arrival_stats",
    "ArrivalStats",
    "arrival_scv",
    "DISPERSION_WINDOWS",
    "TrafficWarning",
    "plot_arrivals",
    "SERVICES",
    "TASK_SOURCES",
    "plan_windows",
    "WindowPlan",
]

__getattr__, __dir__ = attach(__name__, __file__)
