"""Errors that jaxpretrain raises; each message names the problem and the fix."""


class JaxpretrainError(Exception):
  """Base class for errors this library raises with a fix in the message."""


class ConfigError(JaxpretrainError, ValueError):
  """A configuration key or value that cannot be used."""


class CheckpointMismatchError(JaxpretrainError, ValueError):
  """A checkpoint whose contents do not fit the model or run it is restored into."""


class BatchError(JaxpretrainError, ValueError):
  """A batch that cannot be placed on the devices or fed to the step."""


class MissingFileError(JaxpretrainError, FileNotFoundError):
  """A checkpoint, weights file or folder named by a run that is not where it was named."""
