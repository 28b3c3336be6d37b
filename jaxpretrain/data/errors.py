"""Errors raised while finding and preparing datasets."""

from jaxpretrain.errors import JaxpretrainError


class DatasetNotFoundError(JaxpretrainError, FileNotFoundError):
  """A dataset whose files are neither on this machine nor downloadable now."""


class UnknownDatasetError(JaxpretrainError, ValueError):
  """A dataset name that the catalogue does not know."""


class UnknownSplitError(JaxpretrainError, ValueError):
  """A split, or a slice of one, that a prepared dataset does not have."""
