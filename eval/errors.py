"""The one exception type for mistakes in what a user asked for."""


class EvalInputError(ValueError):
    """A bad task, model folder, data source or option. The command line prints its message on one line and
    exits with status 2; library callers get an ordinary ValueError."""
