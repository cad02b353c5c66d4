"""Errors a user can fix: printed as one line, exit status 1, no traceback."""


class UsageError(SystemExit):
    """Raised at start-up (or before the first update) for bad flags, models or files.

    Subclassing SystemExit makes fairseq's command-line tools print just the message.
    """

    def __init__(self, message: str):
        super().__init__(f"fairseq_lrdrop: error: {message}")
