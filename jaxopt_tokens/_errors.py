"""Errors raised for bad user input (files, fields, arguments), and the warning a policy with
no steady state gives wherever it is simulated, exported or served."""

__all__ = ["InputError", "WorkloadError", "UnstableQueueWarning"]


class InputError(ValueError):
    """Input the package cannot accept. The message names the field (and task, file line).

    The CLI turns it into a one-line message and exit code 2.
    """


class WorkloadError(InputError):
    """A workload value that the model cannot accept; the message names field and task."""


class UnstableQueueWarning(UserWarning):
    """A simulated policy loads the server to utilization >= 1 (no steady state exists)."""
