"""Errors pgm raises for problems a user can fix. Each names the problem in plain words."""


class PgmError(Exception):
    """Base class of pgm's own errors."""


class DataError(PgmError, ValueError):
    """Input data of the wrong shape, with NaN/inf, or outside the likelihood's support."""


class UnknownNameError(PgmError, KeyError):
    """An unknown dataset, model, likelihood or objective; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class CapabilityError(PgmError, TypeError):
    """A model asked for something it does not declare (an explicit view, say)."""


class CheckpointError(PgmError, RuntimeError):
    """A run directory or checkpoint that is missing, truncated, corrupt or foreign."""


class RunLockedError(PgmError, RuntimeError):
    """Another process is writing the run directory (``pgm.runlock``); the message names it."""


class EstimatorError(PgmError, RuntimeError):
    """An estimator met values it cannot use (NaN in a chain's weight): says where."""


class TrainingDivergedError(PgmError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class MissingExtraError(PgmError, ImportError):
    """An optional feature whose package is not installed; the message names the extra."""
