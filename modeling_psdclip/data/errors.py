"""The one exception type for mistakes in the data a user points at."""


class DataError(ValueError):
    """A data source cannot be used: its message is one line meant for the user, not a traceback."""
