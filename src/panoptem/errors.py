"""The one error type a user can cause."""


class PanoptemError(Exception):
    """A problem the user can fix (bad path, bad parameter, unknown model...).

    The message is one sentence that says what to do. The command line prints
    it without a traceback and exits with status 2.
    """


def one_line(message: object) -> str:
    """``message`` on one line (line breaks and runs of blanks around them become one space)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())
