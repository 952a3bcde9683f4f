"""The one exception type for user mistakes: the CLI prints its message as one line and exits non-zero."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (a file, a column, a path, a config value); the message says what and where."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of a library exception's message, which can run to many lines."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def explain_load_error(name_or_path: str, err: BaseException) -> str:
    """Why a ``from_pretrained(name_or_path)`` failed, saying whether it was taken as a directory or a hub id."""
    if Path(name_or_path).is_dir():
        return f"the directory exists but: {first_line(err)}"
    return f"no such directory, and as a hub id: {first_line(err)}"


def user_message(err: UserError) -> str:
    """The message of a UserError, also when a DataLoader worker raised it: torch re-raises it in the main process
    with the worker's whole traceback as the message, the original message on its last line."""
    message = str(err)
    if message.startswith("Caught UserError"):
        last = message.rstrip().splitlines()[-1]
        message = last.split("UserError: ", 1)[-1]
    return message


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """The error boundary of every entry point: a :class:`UserError` becomes one ``error:`` line and exit status 2."""
    try:
        yield
    except UserError as err:
        sys.stderr.write(f"error: {user_message(err)}\n")
        raise SystemExit(2) from None
