"""The one exception type that the command line turns into a one-line message."""


class EdgeError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``edge-bench: error: <message>`` and exits non-zero, without a traceback.
    """
