"""Exceptions that command-line tools turn into one-line messages."""


class InputError(ValueError):
    """Bad user input: a file, folder or option that cannot be used.

    The message names the file or option and says what is wrong, so the CLIs
    print it as one line and exit with status 2 instead of a traceback.
    """


class OutputError(Exception):
    """An output could not be written: the disk is full, a quota is reached, an I/O error.

    The message names the file and says that the previous file, if there was
    one, is unchanged. The CLIs print it as one line and exit with status
    :data:`OUTPUT_ERROR_EXIT` (74, ``EX_IOERR`` of ``sysexits.h``).

    Args:
        message: str. ``<file>: cannot be written (<reason>); ...``.
        errno: int or None. The operating system's error number.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


OUTPUT_ERROR_EXIT = 74
