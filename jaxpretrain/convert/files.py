"""Reading a Hugging Face model directory: `config.json` and its weights as numpy arrays.

Safetensors files are read with `safetensors` alone, so importing public
weights needs no PyTorch; only the older `pytorch_model.bin` pickles do.
"""

import json
import os
from typing import Any

from etils import epath
import numpy as np
from safetensors import safe_open

from jaxpretrain import paths
from jaxpretrain.errors import MissingFileError

# Weight files in the order `transformers` prefers them; an index names the shards.
_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json')
# Safetensors dtypes numpy can hold; the others (bfloat16, float8) go through JAX.
_NUMPY_DTYPES = frozenset({'BOOL', 'U8', 'I8', 'U16', 'I16', 'U32', 'I32', 'U64', 'I64', 'F16',
                           'F32', 'F64'})


def is_hf_directory(path: str | os.PathLike) -> bool:
  """Whether `path` looks like a Hugging Face model directory rather than a run's work directory.

  That is, it holds a `config.json` and no `checkpoints/` folder.
  """
  path = paths.as_path(path)
  return (path / 'config.json').is_file() and not (path / 'checkpoints').exists()


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  """The `config.json` of a Hugging Face model directory, as a dict."""
  path = paths.as_path(directory) / 'config.json'
  if not path.is_file():
    raise MissingFileError(
        f'no config.json in {directory}; pass a directory written by a Hugging Face '
        "model's save_pretrained (or downloaded from the Hub), holding config.json and "
        'model.safetensors.')
  return json.loads(path.read_text())


def read_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """All weights of a Hugging Face model directory by their PyTorch names.

  Reads `model.safetensors` (without PyTorch), else `pytorch_model.bin` (with
  PyTorch, loaded with `weights_only=True`), or the shards an
  `*.index.json` lists.

  Raises:
    MissingFileError: when the directory holds none of those files.
    ImportError: for a `pytorch_model.bin` when PyTorch is not installed.
  """
  directory = paths.as_path(directory)
  name = next((n for n in _WEIGHT_FILES if (directory / n).is_file()), None)
  if name is None:
    raise MissingFileError(f'no weights in {directory}: expected one of {list(_WEIGHT_FILES)}.')
  read = _read_safetensors if '.safetensors' in name else _read_torch_pickle
  if not name.endswith('.index.json'):
    return read(directory / name)
  shards = sorted(set(json.loads((directory / name).read_text())['weight_map'].values()))
  state_dict = {}
  for shard in shards:
    state_dict.update(read(directory / shard))
  return state_dict


def _read_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
  with paths.local_copy(path) as local:
    with safe_open(local, framework='numpy') as f:
      names = list(f.keys())
      exotic = {n for n in names if f.get_slice(n).get_dtype() not in _NUMPY_DTYPES}
      state_dict = {n: f.get_tensor(n) for n in names if n not in exotic}
    if exotic:
      with safe_open(local, framework='flax') as f:
        state_dict.update({n: np.asarray(f.get_tensor(n), np.float32) for n in exotic})
  return state_dict


def _read_torch_pickle(path: epath.Path) -> dict[str, np.ndarray]:
  torch = _import_torch(path)
  with paths.local_copy(path) as local:
    state_dict = torch.load(local, map_location='cpu', weights_only=True)
  # numpy has no bfloat16: floats go through float32, which the converted tree uses anyway.
  return {name: (t.detach().float() if t.is_floating_point() else t.detach()).numpy()
          for name, t in state_dict.items()}


def _import_torch(path: epath.Path) -> Any:
  try:
    import torch  # Imported here: optional, only .bin files need it.
  except ImportError as e:
    raise ImportError(
        f'{path} is a PyTorch pickle and reading it needs PyTorch: pip install torch, or save '
        'the model with safe_serialization=True (model.safetensors), which needs no PyTorch.'
    ) from e
  return torch
