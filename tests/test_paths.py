"""Work directories, checkpoints and data directories at gs:// URIs, on a fake bucket.

The `bucket` fixture maps gs://<bucket>/<key> onto a local folder at the two
places where the libraries open files:

- etils.epath's gs:// backend (a test backend in place of gcsfs or TensorFlow's
  gfile): every file jaxpretrain writes or reads, and Orbax's folders, step
  listing, JSON items, commit markers and deletions;
- the TensorStore kvstore spec Orbax builds for a gs:// checkpoint
  (`gcs_utils.get_kvstore_for_gcs`): the `gcs` driver becomes the `file` driver
  on the mapped folder. Orbax still takes its gs:// branch (non-atomic commit
  with a marker file, the GCS kvstore spec, the GCS deleter); only TensorStore's
  HTTP requests to Cloud Storage, and google-cloud-storage's hierarchical-namespace
  lookup (answered "no"), are not exercised without network.

What is exercised: the URI reaches epath, Orbax, TensorBoard and TFDS as given
and never becomes a local path; a run writes metrics, TensorBoard events,
checkpoints with manifests and its tokenizer into the bucket, resumes from it,
and `evaluate` and `finetune --config.finetune.pretrained=gs://...` read it.
"""

import json
import os

from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
import numpy as np
import pytest
from orbax.checkpoint._src.path import gcs_utils

from jaxpretrain import checkpoint, cli, loop, paths, report
from jaxpretrain.data import catalogue
from jaxpretrain.errors import ConfigError

# Absolute: the tests run in an empty current directory, to see that nothing lands there.
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
PRETRAIN = os.path.join(_CONFIGS, 'fashion_mnist_pretrain.py:tiny')
FINETUNE = os.path.join(_CONFIGS, 'fashion_mnist_finetune.py:tiny')


class _FakeBucket:
  """An epath backend for gs:// that keeps gs://<bucket>/<key> at <root>/<bucket>/<key>."""

  def __init__(self, root: str):
    self.root = root

  def local(self, path) -> str:
    text = os.fspath(path)
    assert text.startswith('gs://'), f'the gs:// backend was handed {text!r}'
    return os.path.join(self.root, text[len('gs://'):])

  def _uri(self, path: str) -> str:
    return 'gs://' + os.path.relpath(path, self.root)

  def __getattr__(self, name):
    method = getattr(epath_backend.os_backend, name)

    def call(path, *args, **kwargs):
      args = [self.local(a) if isinstance(a, str) and a.startswith('gs://') else a for a in args]
      out = method(self.local(path), *args, **kwargs)
      if name == 'glob':
        return [self._uri(p) for p in out]
      if name == 'walk':
        return ((self._uri(d), dirs, files) for d, dirs, files in out)
      return out

    return call


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake gs:// store; the test runs in an empty current directory of its own."""
  fake = _FakeBucket(str(tmp_path / 'store'))
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'gs', fake)
  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs',
                      lambda path: {'driver': 'file', 'path': fake.local(path)})
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield fake
  assert not list(cwd.iterdir()), 'a URI was written as a local path under the cwd'


def _cli(*args: str) -> int:
  return cli.main([*args, '--no-progress'])


def test_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.as_path('gs://b/run') / 'checkpoints') == 'gs://b/run/checkpoints'
  assert os.fspath(paths.as_path('runs/x')) == str(tmp_path / 'runs' / 'x')
  with pytest.raises(ConfigError, match='a config file must be on this machine'):
    paths.local('gs://b/c.py', 'a config file')


def test_a_run_in_a_gs_workdir_writes_resumes_and_is_read_from_there(bucket, capsys):
  store = epath.Path(bucket.local('gs://b/pre'))
  # Stopped at step 3, then resumed to step 6 in the same URI.
  assert _cli('pretrain', '--config', PRETRAIN, '--config.train.steps=3',
              '--workdir', 'gs://b/pre') == 0
  assert _cli('pretrain', '--config', PRETRAIN, '--workdir', 'gs://b/pre') == 0
  # Resumed from step 3's checkpoint: no step is logged twice.
  records = loop.read_metrics('gs://b/pre')
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 3, 4, 6]
  assert (store / 'metrics.jsonl').is_file()
  assert [p.name for p in (store / 'tensorboard').iterdir()][0].startswith('events.out.tfevents')
  assert (store / 'tensorboard').glob('events*') and all(
      p.stat().length > 0 for p in (store / 'tensorboard').iterdir())
  assert sorted(p.name for p in (store / 'checkpoints').iterdir()) == ['6']
  saved = store / 'checkpoints' / '6'
  assert {'state', 'manifest', 'data'} <= {p.name for p in saved.iterdir()}
  assert json.loads((saved / 'manifest' / 'metadata').read_text())['step'] == 6
  assert checkpoint.read_manifest('gs://b/pre')['kind'] == 'pretrain'
  capsys.readouterr()

  assert _cli('evaluate', '--config', PRETRAIN, '--config.data.eval_batch_size=16',
              '--workdir', 'gs://b/pre', '--split', 'test[:32]') == 0
  scores = json.loads(capsys.readouterr().out)
  assert scores['examples'] == 32 and np.isfinite(scores['loss'])

  assert _cli('finetune', '--config', FINETUNE, '--config.finetune.pretrained=gs://b/pre',
              '--workdir', 'gs://b/ft') == 0
  manifest = checkpoint.read_manifest('gs://b/ft')
  assert manifest['finetune'][0] == {**manifest['finetune'][0], 'name': 'from_pretrained',
                                     'source': 'gs://b/pre'}
  # The pre-trained encoder's weights are what fine-tuning started from.
  pre = checkpoint.restore_params('gs://b/pre')
  assert set(pre) >= {'encoder'}

  report.plot_curves(paths.as_path('gs://b'), {paths.as_path('gs://b/ft'): 'fine-tuned'},
                     paths.as_path('gs://b/curves.png'), {paths.as_path('gs://b/pre'): 'pre'})
  assert epath.Path(bucket.local('gs://b/curves.png')).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_data_dir_uri_reaches_the_dataset_builder_unresolved(bucket, monkeypatch):
  seen = []

  def builder(*, data_dir):
    seen.append(data_dir)
    raise LookupError('stop here: only the path is looked at')

  monkeypatch.setitem(catalogue._BUILDERS, 'fashion_mnist', builder)
  with pytest.raises(LookupError, match='stop here'):
    catalogue.data_source('fashion_mnist', 'train', data_dir='gs://b/tfds')
  assert seen == ['gs://b/tfds']


def test_a_config_file_at_a_uri_is_refused_in_one_line(bucket, capsys):
  assert _cli('pretrain', '--config', 'gs://b/configs/x.py:tiny', '--workdir', 'gs://b/x') == 2
  assert 'a config file must be on this machine, not gs://b/configs/x.py' in (
      capsys.readouterr().err)
