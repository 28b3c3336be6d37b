"""Work directories, checkpoints and data directories at gs:// URIs, on a fake bucket.

`tests/fake_gcs.py` keeps gs://<bucket>/<name> in a local folder and opens it
to both readers of gs:// here: etils.epath (through a test backend, standing in
for gcsfs or TensorFlow's gfile) and TensorStore's own `gcs` driver (through a
local HTTP server speaking the Cloud Storage JSON API). Orbax takes its real
gs:// path: the URI string, unresolved, chooses its GCS atomicity (a commit
marker, no rename), its GCS deleter and TensorStore's `gcs` kvstore, whose HTTP
requests write and read the arrays.

Not exercised (they need network or credentials): gcsfs or gfile themselves,
Google's authentication (a test token stands in), and google-cloud-storage's
question whether a bucket has a hierarchical namespace (answered "no").
"""

import json
import os

from etils import epath
from etils.epath import gpath
import jax
import numpy as np
import pytest
import safetensors.numpy
from orbax.checkpoint._src.path import gcs_utils

from jaxpretrain import checkpoint, cli, convert, loop, paths, report
from jaxpretrain.data import catalogue, text_tfds, tokenizers
from jaxpretrain.data.errors import DatasetNotFoundError
from jaxpretrain.errors import ConfigError
from tests import fake_gcs

# Absolute: the tests run in an empty current directory, to see that nothing lands there.
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
PRETRAIN = os.path.join(_CONFIGS, 'fashion_mnist_pretrain.py:tiny')
FINETUNE = os.path.join(_CONFIGS, 'fashion_mnist_finetune.py:tiny')
# TensorStore wants a valid bucket name (3 characters or more).
BUCKET = 'gs://test-bucket'


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """A fake Cloud Storage on a local port, for TensorStore's gs:// driver; yields its root."""
  root = str(tmp_path_factory.mktemp('gcs'))
  with fake_gcs.serve(root) as url, pytest.MonkeyPatch.context() as patch:
    patch.setenv('TENSORSTORE_GCS_HTTP_URL', url)
    patch.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'token')
    yield root


@pytest.fixture
def bucket(gcs, tmp_path, monkeypatch):
  """gs:// through epath and TensorStore onto `gcs`; the test runs in an empty directory."""
  store = fake_gcs.Backend(gcs)
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'gs', store)
  # google-cloud-storage asks whether a bucket has a hierarchical namespace; this one has none.
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield store
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
  pre, ft = f'{BUCKET}/pre', f'{BUCKET}/ft'
  store = epath.Path(bucket.local(pre))
  # Stopped at step 3, then resumed to step 6 in the same URI.
  assert _cli('pretrain', '--config', PRETRAIN, '--config.train.steps=3', '--workdir', pre) == 0
  assert _cli('pretrain', '--config', PRETRAIN, '--workdir', pre) == 0
  # Resumed from step 3's checkpoint, read back from the bucket: no step is trained twice.
  assert [r['step'] for r in loop.read_metrics(pre) if r['split'] == 'train'] == [2, 3, 4, 6]
  events = list((store / 'tensorboard').iterdir())
  assert len(events) == 2 and all(p.name.startswith('events.out.tfevents') and p.stat().length
                                  for p in events)
  # keep_last=1: Orbax's gs:// deleter removed step 3.
  assert [p.name for p in (store / 'checkpoints').iterdir()] == ['6']
  saved = store / 'checkpoints' / '6'
  # Orbax's gs:// commit (a marker file: GCS has no atomic rename), and the arrays that
  # TensorStore's gcs driver uploaded over HTTP.
  assert (saved / 'commit_success.txt').is_file()
  assert list((saved / 'state').glob('ocdbt.process_0/d/*'))
  assert json.loads((saved / 'manifest' / 'metadata').read_text())['step'] == 6
  assert checkpoint.read_manifest(pre)['kind'] == 'pretrain'
  # Read through TensorStore's gcs driver, the arrays are those in the bucket's folder.
  for x, y in zip(jax.tree.leaves(checkpoint.restore_params(pre)),
                  jax.tree.leaves(checkpoint.restore_params(os.fspath(store))), strict=True):
    np.testing.assert_array_equal(x, y)
  capsys.readouterr()

  assert _cli('evaluate', '--config', PRETRAIN, '--config.data.eval_batch_size=16',
              '--workdir', pre, '--split', 'test[:32]') == 0
  scores = json.loads(capsys.readouterr().out)
  assert scores['examples'] == 32 and np.isfinite(scores['loss'])

  assert _cli('finetune', '--config', FINETUNE, '--config.train.epochs=1',
              f'--config.finetune.pretrained={pre}', '--workdir', ft) == 0
  source = checkpoint.read_manifest(ft)['finetune'][0]
  assert (source['name'], source['source']) == ('from_pretrained', pre)

  report.plot_curves(paths.as_path(BUCKET), {paths.as_path(ft): 'fine-tuned'},
                     paths.as_path(f'{BUCKET}/curves.png'), {paths.as_path(pre): 'pre-trained'})
  assert epath.Path(bucket.local(f'{BUCKET}/curves.png')).read_bytes()[:4] == b'\x89PNG'


def test_a_tokenizer_and_a_hugging_face_directory_are_read_from_the_bucket(bucket):
  tokenizer = tokenizers.train_wordpiece(['to be or not to be', 'that is the question'], 40)
  assert os.fspath(tokenizers.save(tokenizer, f'{BUCKET}/tok')) == f'{BUCKET}/tok/tokenizer.json'
  assert tokenizers.load(f'{BUCKET}/tok').get_vocab() == tokenizer.get_vocab()
  hf = epath.Path(bucket.local(f'{BUCKET}/hf'))
  hf.mkdir(parents=True)
  (hf / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  weights = {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  safetensors.numpy.save_file(weights, os.fspath(hf / 'model.safetensors'))
  assert convert.is_hf_directory(f'{BUCKET}/hf')
  assert convert.read_config(f'{BUCKET}/hf') == {'model_type': 'bert'}
  np.testing.assert_array_equal(convert.read_state_dict(f'{BUCKET}/hf')['w'], weights['w'])


def test_a_data_dir_uri_reaches_the_dataset_builder_unresolved(bucket, monkeypatch):
  seen = []

  def builder(*, data_dir):
    seen.append(data_dir)
    raise LookupError('stop here: only the path is looked at')

  monkeypatch.setitem(catalogue._BUILDERS, 'fashion_mnist', builder)
  with pytest.raises(LookupError, match='stop here'):
    catalogue.data_source('fashion_mnist', 'train', data_dir=f'{BUCKET}/tfds')
  assert seen == [f'{BUCKET}/tfds']


def test_tfds_looks_for_a_prepared_dataset_at_the_data_dir_uri(bucket):
  # TFDS reads the bucket through epath: an empty one holds no prepared dataset.
  with pytest.raises(DatasetNotFoundError, match=f'is not prepared in {BUCKET}/tfds:'):
    text_tfds.read_texts('imdb_reviews', 'test', data_dir=f'{BUCKET}/tfds')


def test_a_workdir_whose_scheme_orbax_cannot_write_is_refused_before_anything_is_written(
    bucket, capsys):
  assert _cli('pretrain', '--config', PRETRAIN, '--workdir', 's3://b/run') == 2
  assert ('checkpoints cannot go to s3://b/run: Orbax writes them to local (or mounted) '
          'folders and gs:// only') in capsys.readouterr().err


def test_a_config_file_at_a_uri_is_refused_in_one_line(bucket, capsys):
  assert _cli('pretrain', '--config', f'{BUCKET}/configs/x.py:tiny', '--workdir', f'{BUCKET}/x') == 2
  assert f'a config file must be on this machine, not {BUCKET}/configs/x.py' in (
      capsys.readouterr().err)
