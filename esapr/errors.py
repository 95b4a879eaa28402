"""The one exception type for problems the user can fix (bad input, missing files, bad options).

The CLI prints its message as a single line and exits non-zero, without a traceback.
"""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a command; the message says what was kept and how to go on."""
