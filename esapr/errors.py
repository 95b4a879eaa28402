"""The one exception type for problems the user can fix (bad input, missing files, bad options).

The CLI prints its message as a single line and exits non-zero, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a command; the message says what was kept and how to go on."""
