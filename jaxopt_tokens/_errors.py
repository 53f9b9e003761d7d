"""Errors raised for bad user input (files, fields, arguments)."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Input the package cannot accept. The message names the field (and task, file line).

    The CLI turns it into a one-line message and exit code 2.
    """
