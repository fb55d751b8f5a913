"""The one exception a user's mistake raises."""


class GalaxyClassError(Exception):
    """A problem the user can fix (bad file, bad argument); the CLI prints it as one line."""
