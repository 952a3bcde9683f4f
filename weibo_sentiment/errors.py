"""The one exception type for user mistakes: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix (a file, a column, a path, a config value); the message says what and where."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of a library exception's message, which can run to many lines."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
