"""The one exception type that reaches the user as a clean message."""


class BenchmarkError(Exception):
    """Bad input or an unusable environment, explained in one line.

    The command line prints the message and exits non-zero instead of a traceback,
    so the message must name the file, key or column to fix.
    """
