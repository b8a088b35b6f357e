"""The one exception type users see.

Anything raised as `EngineError` is a problem with the user's input or environment (a bad flag, a
missing file, an unwritable directory). The CLI prints its message as a single line and exits with
status 2, without a traceback. Messages say what was wrong and how to fix it.
"""


class EngineError(Exception):
    """A user-facing error: one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
