"""The one exception a user's mistake raises."""


class GalaxyClassError(Exception):
    """A problem the user can fix (bad file, bad argument); the CLI prints it as one line."""


def first_line(error):
    """The first line of an exception's message (or its type), for one-line error messages."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
