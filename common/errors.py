"""The project's exception types.

Every error a user can cause (a bad config, missing data, an infeasible budget,
a corrupt checkpoint or file) is raised as one of these, with a message that
says what to do. Command-line entry points catch `EdgeInferError`, print the
message and exit non-zero without a traceback (see `common.cli.run_main`).
"""

from __future__ import annotations


class EdgeInferError(Exception):
  """Base class of every error a user can cause."""


class ConfigError(EdgeInferError, ValueError):
  """A configuration value is missing, of the wrong type or out of range."""


class DataError(EdgeInferError):
  """A data set is missing, unprepared, or malformed."""


class CheckpointError(EdgeInferError):
  """A checkpoint cannot be read or does not match the model."""


class TrainingDivergedError(EdgeInferError):
  """The loss became NaN or infinite."""


class InfeasibleError(EdgeInferError):
  """An optimisation problem (budget, deadline, constraint set) has no solution."""


class ExportError(EdgeInferError):
  """A model could not be exported or the exported model disagrees with JAX."""


class ServingError(EdgeInferError):
  """A model repository, a server address, a link or a request of the serving runtime is unusable."""
