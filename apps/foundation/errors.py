"""Errors that geoscale reports to the user as one line, and the exit codes that go with them."""

from __future__ import annotations

import errno
import sys
from typing import NoReturn

#: Exit code for bad input or configuration: retrying the same command cannot succeed.
#: The Kubernetes launcher's podFailurePolicy fails a Job at once on this code.
CONFIG_ERROR_EXIT_CODE = 2

#: Exit code for input that is not available yet (a product in a catalogue's long-term archive): retrying
#: at once cannot succeed, the same command can once it is; the launcher fails a Job at once on it too.
NOT_READY_EXIT_CODE = 3

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


class InputError(Exception):
    """Bad input or configuration: a file, setting or dataset that cannot be used as given.

    The message names the input and the problem in one line; the command exits with
    CONFIG_ERROR_EXIT_CODE without a traceback.
    """


class RemoteRunFailed(RuntimeError):
    """A run that failed elsewhere (a sweep point's pod): the message says why and where its log is.

    The command prints it as one line and exits with 1: the traceback would be the launcher's, not
    the run's.
    """


def one_line(message: object) -> str:
    """``message`` as text on one line: its non-empty lines, stripped and joined by spaces."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def input_error_cause(exc: BaseException | None) -> InputError | None:
    """The InputError behind ``exc`` (itself, or one that a library wrapped), if any."""
    while exc is not None:
        if isinstance(exc, InputError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def read_only_mount_cause(exc: BaseException | None) -> InputError | None:
    """An InputError naming the read-only mount that ``exc`` (or an error behind it) failed to write
    to: a Job that writes where its pod mounts a volume read-only fails at once, saying where."""
    from apps.foundation.files import mount_point

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            path = exc.filename or "a path"
            return InputError(f"{path}: cannot be written, {mount_point(path) if exc.filename else 'its mount'} "
                              f"is mounted read-only here (mount it writable for this Job)")
        exc = exc.__cause__ or exc.__context__
    return None


def exit_with_error(message: object) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with CONFIG_ERROR_EXIT_CODE."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT_CODE)
