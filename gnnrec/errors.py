"""The one base exception the CLI turns into a clear message and a non-zero exit."""


class GnnrecError(Exception):
    """A user-facing failure: bad input, a missing server, an unknown id.

    The message must say what failed and where (file, row, id), so the CLI prints
    it as-is and exits with code 2 instead of a traceback.
    """
