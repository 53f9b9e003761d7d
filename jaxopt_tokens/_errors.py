"""Errors raised for bad user input (files, fields, arguments)."""

__all__ = ["InputError", "WorkloadError"]


class InputError(ValueError):
    """Input the package cannot accept. The message names the field (and task, file line).

    The CLI turns it into a one-line message and exit code 2.
    """


class WorkloadError(InputError):
    """A workload value that the model cannot accept; the message names field and task."""
