"""The one exception type the CLI turns into a single line and a non-zero exit."""


class UserError(Exception):
    """Bad input the user can fix: the message says what is wrong and how to fix it.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    """


def one_line(error: BaseException | str) -> str:
    """The first line of an exception's message (or of a text), for one-line user errors."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
