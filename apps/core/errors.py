"""Errors that geoscale reports to the user as one line, and the exit codes that go with them."""

#: Exit code for bad input or configuration: retrying the same command cannot succeed.
#: The Kubernetes launcher's podFailurePolicy fails a Job at once on this code.
CONFIG_ERROR_EXIT_CODE = 2


class InputError(Exception):
    """Bad input or configuration: a file, setting or dataset that cannot be used as given.

    The message names the input and the problem in one line; the command exits with
    CONFIG_ERROR_EXIT_CODE without a traceback.
    """


def one_line(message: object) -> str:
    """``message`` as text on one line: its non-empty lines, stripped and joined by spaces."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())
