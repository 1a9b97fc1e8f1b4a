"""Named errors a user can cause. The CLI prints them as one line; the app shows them as a message.

Anything else that escapes is a bug, and is allowed to be a traceback.
"""


class ReapError(Exception):
    """Base class: a problem with the user's input or environment, with a message meant for them."""


class ModelLoadError(ReapError):
    """The model could not be found or read (bad id, missing folder, no network, no access)."""


class UnsupportedModel(ReapError):
    """The model loaded, but it is not a Mixture-of-Experts family we have an adapter for."""


class CalibrationError(ReapError):
    """The calibration source is missing, empty, malformed, or unreachable."""


class InvalidPlan(ReapError):
    """A pruning request that cannot be honoured (ratio out of range, fewer than top-k kept, ...)."""


class StatisticsError(ReapError):
    """A statistics file that is unreadable or does not belong to this model."""


class OutputError(ReapError):
    """An output path that cannot be written, or must not be (it holds something that is not ours)."""


class Cancelled(ReapError):
    """The user stopped a long action; nothing it would have changed was changed."""
