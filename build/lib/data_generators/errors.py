"""Exceptions that command-line tools turn into one-line messages."""


class InputError(ValueError):
    """Bad user input: a file, folder or option that cannot be used.

    The message names the file or option and says what is wrong, so the CLIs
    print it as one line and exit with status 2 instead of a traceback.
    """
