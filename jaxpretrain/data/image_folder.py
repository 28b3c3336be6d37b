"""A folder of one's own images, one sub-folder per class, as a TFDS builder.

Layout: `root/<class>/*.png|jpg|jpeg|bmp` (files may sit deeper inside a class
folder; other files and hidden ones are ignored) gives one `train` split;
`root/train/<class>/...` with `root/test/...` (and `root/validation/...`) gives
those splits. Class names are the sorted class folder names of all splits, so a
label means the same class in every split. Records go by class, then by path.
Images are converted to grey (1 channel) or RGB (3), then resized with Pillow
(bilinear, antialiased; the aspect ratio is not kept) and stored as uint8 tensors.

Each folder prepares into `<data_dir>/jaxpretrain_image_folder/<config>/1.0.0`,
the config named after the folder's name, a hash of its absolute path, the image
shape and a fingerprint of its contents (every image's path, size and
modification time). A folder whose images changed thus gets a fresh preparation
instead of the stale one; earlier preparations stay on disk until removed.

In the catalogue a folder is named `folder:<path>`, optionally followed by
`?size=<H>[x<W>]&channels=<1|3>` (see `parse_spec`).
"""

from collections.abc import Iterator, Mapping
import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
from typing import Any

from etils import epath
import numpy as np
from PIL import Image, ImageOps
import tensorflow_datasets as tfds

from jaxpretrain import paths
from jaxpretrain.data import image_records
from jaxpretrain.data.errors import DatasetNotFoundError
from jaxpretrain.errors import JaxpretrainError

IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.png')
SPLITS = ('train', 'validation', 'test')
OPTIONS = ('size', 'channels')
# Pillow modes of grey images (LA: grey and alpha); every other mode counts as colour.
_GREY_MODES = ('1', 'L', 'LA', 'I', 'F')
_FINGERPRINT_CHARS = 12


class ImageFolderError(JaxpretrainError, ValueError):
  """An image folder that cannot be made into a dataset: bad layout or unreadable image."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a folder holds: sorted class names and, per split, `(image path, label)` pairs."""

  root: pathlib.Path
  classes: tuple[str, ...]
  files: Mapping[str, tuple[tuple[pathlib.Path, int], ...]]

  def fingerprint(self) -> str:
    """A hash of every image's split, path, byte size and modification time."""
    digest = hashlib.sha256()
    for split, files in self.files.items():
      for path, label in files:
        stat = path.stat()
        fields = (split, label, path.relative_to(self.root), stat.st_size, stat.st_mtime_ns)
        digest.update(('\t'.join(map(str, fields)) + '\n').encode('utf-8', 'surrogateescape'))
    return digest.hexdigest()[:_FINGERPRINT_CHARS]


def _visible(path: pathlib.Path) -> bool:
  return not path.name.startswith('.')


def _sub_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _images(class_dir: pathlib.Path) -> list[pathlib.Path]:
  # Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints/`) are not images of the class.
  return sorted(p for p in class_dir.rglob('*')
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                and not any(part.startswith('.') for part in p.relative_to(class_dir).parts))


def scan(root: str | os.PathLike) -> Layout:
  """Finds the splits, classes and images of an image folder.

  Raises:
    DatasetNotFoundError: `root` is not a folder.
    ImageFolderError: the folder is empty, has no class sub-folders, mixes split
      and class folders, or has a class folder without images.
  """
  root = pathlib.Path(root).expanduser().resolve()
  if not root.is_dir():
    raise DatasetNotFoundError(f'image folder {root} does not exist or is not a folder')
  expected = (f'expected one sub-folder of images per class, {root}/<class>/*.png (or .jpg, '
              f'.jpeg, .bmp), or split folders {root}/train/<class>/..., {root}/test/<class>/...')
  top = _sub_folders(root)
  if not top:
    what = 'is empty' if not any(root.iterdir()) else 'has no class sub-folders'
    raise ImageFolderError(f'image folder {root} {what}: {expected}')
  names = {p.name for p in top}
  if 'train' in names:
    if others := sorted(names - set(SPLITS)):
      raise ImageFolderError(
          f'{root} has a train/ split folder, so its other sub-folders must be splits too '
          f'({", ".join(SPLITS)}), but it also has {others}: {expected}')
    split_dirs = {split: root / split for split in SPLITS if split in names}
  else:
    split_dirs = {'train': root}
  class_dirs = {}
  for split, folder in split_dirs.items():
    class_dirs[split] = _sub_folders(folder)
    if not class_dirs[split]:
      raise ImageFolderError(f'split folder {folder} has no class sub-folders: {expected}')
  classes = tuple(sorted({d.name for dirs in class_dirs.values() for d in dirs}))
  label = {name: i for i, name in enumerate(classes)}
  files = {}
  for split, dirs in class_dirs.items():
    pairs = []
    for class_dir in dirs:
      images = _images(class_dir)
      if not images:
        raise ImageFolderError(f'class folder {class_dir} holds no images '
                               f'({", ".join(IMAGE_EXTENSIONS)}): {expected}')
      pairs.extend((path, label[class_dir.name]) for path in images)
    files[split] = tuple(pairs)
  return Layout(root=root, classes=classes, files=files)


def _open(path: pathlib.Path) -> Image.Image:
  """The decoded image at `path`, turned upright by its EXIF orientation."""
  try:
    with Image.open(path) as image:
      image.load()
      return ImageOps.exif_transpose(image)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageFolderError(f'cannot read image {path}: {e}') from e


def _channels_of(image: Image.Image) -> int:
  return 1 if image.mode in _GREY_MODES or image.mode.startswith('I;') else 3


def _to_array(image: Image.Image, image_size: tuple[int, int], channels: int) -> np.ndarray:
  if image.mode.startswith('I;16'):
    # 16-bit grey: Pillow's conversion to 8 bits clips at 255 instead of scaling.
    image = Image.fromarray(np.round(np.asarray(image, np.float32) / 257).astype(np.uint8))
  image = image.convert('L' if channels == 1 else 'RGB')
  height, width = image_size
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8).reshape(height, width, channels)


def load_image(path: str | os.PathLike, image_size: tuple[int, int], channels: int
               ) -> np.ndarray:
  """Reads an image file as a `(height, width, channels)` uint8 array.

  The image is turned upright by its EXIF orientation, converted to grey or
  RGB (dropping any alpha channel), then resized bilinearly to `image_size`.

  Raises:
    ImageFolderError: the file cannot be read as an image.
  """
  return _to_array(_open(pathlib.Path(path)), image_size, channels)


def parse_spec(spec: str) -> tuple[str, tuple[int, int] | None, int | None]:
  """Splits `'<path>[?size=<H>[x<W>]&channels=<1|3>]'` into path, image size and channels.

  Example:
    >>> parse_spec('~/pets?size=64&channels=3')
    ('~/pets', (64, 64), 3)
  """
  path, _, query = spec.partition('?')
  paths.local(path, 'an image folder (folder:<path>)')
  options = {}
  for item in filter(None, query.split('&')):
    key, _, value = item.partition('=')
    if key not in OPTIONS:
      raise ImageFolderError(f'unknown option {key!r} in image folder {spec!r}; options: '
                             f'{", ".join(OPTIONS)} (e.g. folder:{path}?size=32x32&channels=3)')
    options[key] = value
  size = channels = None
  if 'size' in options:
    match = re.fullmatch(r'(\d+)(?:x(\d+))?', options['size'])
    if not match:
      raise ImageFolderError(f"size must be '<H>' or '<H>x<W>' in pixels, got "
                             f"{options['size']!r} in {spec!r}")
    size = (int(match[1]), int(match[2] or match[1]))
  if 'channels' in options:
    if options['channels'] not in ('1', '3'):
      raise ImageFolderError(f"channels must be 1 or 3, got {options['channels']!r} in {spec!r}")
    channels = int(options['channels'])
  if not path:
    raise ImageFolderError(f'no folder in image folder {spec!r}; write folder:<path>')
  return path, size, channels


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One folder at one image shape; `name` tells folders, shapes and contents apart."""

  root: str = ''
  image_size: tuple[int, int] = (0, 0)
  channels: int = 0
  # Whether the images must already have this size and number of channels (true
  # when these were inferred from the first image rather than asked for).
  check_size: bool = False
  check_channels: bool = False


def _config_name(layout: Layout, image_size: tuple[int, int], channels: int) -> str:
  slug = re.sub(r'[^a-z0-9]+', '_', layout.root.name.lower()).strip('_')[:40] or 'root'
  path_hash = hashlib.sha256(os.fsencode(layout.root)).hexdigest()[:8]
  height, width = image_size
  return f'{slug}-{path_hash}-{height}x{width}x{channels}-{layout.fingerprint()}'


@contextlib.contextmanager
def _without_custom_config_warning() -> Iterator[None]:
  # Every folder is a config of its own, which TFDS warns about on each builder.
  def keep(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')

  logger = logging.getLogger('absl')
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


class JaxpretrainImageFolder(tfds.core.GeneratorBasedBuilder):
  """The images of a folder with one sub-folder per class (see the module docstring).

  Example:
    >>> builder = JaxpretrainImageFolder(root='~/pets', image_size=(64, 64), channels=3)
    >>> builder.download_and_prepare()
    >>> train = builder.as_data_source('train')
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images resized with Pillow and stored as uint8 tensors.'}
  code_path = epath.Path(__file__)  # see JaxpretrainFashionMnist

  def __init__(self, *, root: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
               channels: int | None = None, file_format: str = image_records.FILE_FORMAT,
               **kwargs: Any):
    """Scans `root`; without `image_size` or `channels`, the first image's are used.

    Args:
      root: the folder.
      image_size: `(height, width)` (or one int for both) to resize every image to;
        by default the first image's, and then every image must have that size.
      channels: 1 (grey) or 3 (RGB); by default 1 if the first image is grey, else 3,
        and then every image must be grey or coloured alike.
      file_format: array_record, the format read without TensorFlow.
      **kwargs: `data_dir` and other arguments of `tfds.core.DatasetBuilder`.
    """
    self.layout = scan(root)
    if channels not in (None, 1, 3):
      raise ImageFolderError(f'channels must be 1 or 3, got {channels!r}')
    if isinstance(image_size, int):
      image_size = (image_size, image_size)
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
      raise ImageFolderError(f'image_size must be (height, width) in pixels, got {image_size!r}')
    if image_size is None or channels is None:
      first = _open(next(iter(self.layout.files.values()))[0][0])
      width, height = first.size
      inferred_channels = _channels_of(first)
    config = ImageFolderConfig(
        name='', version=self.VERSION, root=os.fspath(self.layout.root),
        image_size=tuple(image_size or (height, width)), channels=channels or inferred_channels,
        check_size=image_size is None, check_channels=channels is None)
    config.name = _config_name(self.layout, config.image_size, config.channels)
    config.description = f'Images of {self.layout.root}.'
    with _without_custom_config_warning():
      super().__init__(config=config, file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return image_records.image_info(
        self, shape=(*config.image_size, config.channels), classes=self.layout.classes,
        description=f'Images of {config.root}, one sub-folder per class.')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The images are local.
    return {split: self._generate_examples(files) for split, files in self.layout.files.items()}

  def _check(self, path: pathlib.Path, image: Image.Image) -> None:
    config = self.builder_config
    height, width = config.image_size
    if config.check_size and image.size != (width, height):
      raise ImageFolderError(
          f'image {path} is {image.height}x{image.width} (height x width), but the first image '
          f'is {height}x{width}; give the size to resize all images to, e.g. '
          f'folder:{config.root}?size={height}x{width}')
    if config.check_channels and _channels_of(image) != config.channels:
      kinds = {1: 'grey', 3: 'in colour'}
      raise ImageFolderError(
          f'image {path} is {kinds[_channels_of(image)]} but the first image is '
          f'{kinds[config.channels]}; give the channels to convert all images to, e.g. '
          f'folder:{config.root}?channels=3')

  def _generate_examples(self, files: tuple[tuple[pathlib.Path, int], ...]
                         ) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for i, (path, label) in enumerate(files):
      image = _open(path)
      self._check(path, image)
      yield i, {'image': _to_array(image, config.image_size, config.channels), 'label': label}
