"""Paths of work directories, checkpoints and data: local folders or URIs such as gs://.

Everything a run reads or writes goes through `etils.epath`, as Orbax and TFDS
do, so `gs://bucket/run` stays that URI: a local path is made absolute, a URI
is never resolved against the current directory. Files a library can only read
or write locally (a config `.py`, a dataset of loose image files) are checked by
`local` and refused with a one-line error when given a URI.
"""

from collections.abc import Iterator
import contextlib
import io
import os
import tempfile
from typing import Any

from etils import epath

from jaxpretrain.errors import ConfigError

PathLike = str | os.PathLike
# The URI schemes Orbax writes checkpoints to (arrays through TensorStore's GCS
# driver); it would hand any other scheme to TensorStore's file driver.
CHECKPOINT_SCHEMES = ('gs',)


def is_uri(path: PathLike) -> bool:
  """Whether `path` names a location with a scheme, e.g. gs://bucket/run."""
  return '://' in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """An `epath.Path`: a URI as it is, a local path with `~` expanded and made absolute."""
  if is_uri(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def checkpoint_path(path: PathLike) -> epath.Path:
  """`as_path(path)` for checkpoints: a local path or a URI Orbax can write (gs://)."""
  path = as_path(path)
  if is_uri(path) and os.fspath(path).split('://')[0] not in CHECKPOINT_SCHEMES:
    raise ConfigError(f'checkpoints cannot go to {path}: Orbax writes them to local (or '
                      'mounted) folders and gs:// only; use such a work directory.')
  return path


def local(path: PathLike, what: str) -> str:
  """A local path as a string, or a `ConfigError` naming `what` when `path` is a URI.

  Args:
    path: the path given.
    what: what the path is for, e.g. 'a config file', for the message.
  """
  if is_uri(path):
    raise ConfigError(f'{what} must be on this machine, not {os.fspath(path)}; copy it to a '
                      'local folder and pass that path.')
  return os.path.expanduser(os.fspath(path))


@contextlib.contextmanager
def local_copy(path: epath.Path) -> Iterator[str]:
  """A local file with `path`'s contents, for readers of local files only (safetensors, torch).

  A local `path` is used in place; a URI is copied to a temporary file first.
  """
  if not is_uri(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    copy = os.path.join(tmp, path.name)
    with open(copy, 'wb') as f:
      f.write(path.read_bytes())
    yield copy


def append_text(path: epath.Path, text: str) -> None:
  """Appends `text` to a file, creating it.

  Object stores (gs://, s3://) have no append: there the file is read and
  written whole, which suits the small logs it is used for.
  """
  if not is_uri(path):
    with path.open('a') as f:
      f.write(text)
    return
  path.write_text((path.read_text() if path.exists() else '') + text)


def save_figure(figure: Any, path: epath.Path, **savefig_kwargs: Any) -> None:
  """Saves a matplotlib figure as a PNG at `path` (matplotlib writes local files only)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', **savefig_kwargs)
  path.write_bytes(buffer.getvalue())


class _EventFile:
  """A TensorBoard event file written whole through epath at each flush.

  tensorboardX writes gs:// only through google-cloud-storage and other schemes
  not at all; this writer serves any scheme epath knows. Event files of scalar
  logs are small, so rewriting one per flush is cheap.
  """

  def __init__(self, path: str):
    self._path, self._buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    self._path.write_bytes(self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EventFiles:
  """tensorboardX's writer factory interface over `_EventFile`."""

  def open(self, path: str) -> _EventFile:
    return _EventFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def summary_writer(logdir: epath.Path) -> Any:
  """A tensorboardX `SummaryWriter` for `logdir`, a local folder or a URI.

  For a URI, event files are written through epath (see `_EventFile`), so they
  go wherever epath sends that scheme. Returns None without tensorboardX.
  """
  try:
    from tensorboardX import SummaryWriter, record_writer  # Optional: TensorBoard plots.
  except ImportError:
    return None
  if is_uri(logdir):
    record_writer.register_writer_factory(os.fspath(logdir).split('://')[0], _EventFiles())
  return SummaryWriter(os.fspath(logdir))
