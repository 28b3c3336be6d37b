"""Test set-up: 8 fake CPU devices, configured before any JAX computation."""

import os
import shutil
import tempfile

import filelock

# The tests' programs are tiny, so XLA:CPU spends far longer optimising them than running
# them: the lowest backend optimisation level compiles a BERT step about 3x faster, and the
# older elemental fusion emitters halve what is left. Set before JAX creates its CPU client,
# which reads the flags once (subprocesses inherit them).
os.environ['XLA_FLAGS'] = ' '.join((os.environ.get('XLA_FLAGS', ''),
                                    '--xla_backend_optimization_level=0',
                                    '--xla_llvm_disable_expensive_passes=true',
                                    '--xla_cpu_use_fusion_emitters=false')).strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_num_cpu_devices', 8)
# Many tests compile the same steps (the same tiny configs run single, meshed and pmapped,
# resumed and not): one compilation cache for the whole run, shared by the pytest-xdist
# workers through the environment, compiles each once. The process that made it removes it.
_CACHE_ENV = 'JAXPRETRAIN_TEST_XLA_CACHE'
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='jaxpretrain-tests-xla-')
jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def text_recipe_run(tmp_path_factory):
  """The tiny text recipe's work directory: BERT MLM (`pretrain/`), both genre classifiers
  (`finetune/`, `scratch/`) and the GPT CLM (`lm/`), run once for every test that reads them.

  Under pytest-xdist the workers share it: the first to need it runs the recipe while the
  others wait on its lock."""
  from jaxpretrain import cli  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the workers' base directories share this parent
  workdir, done = root / 'shakespeare', root / 'shakespeare.done'
  with filelock.FileLock(root / 'shakespeare.lock'):
    if not done.exists():
      assert cli.main(['recipe', '--config', 'configs/shakespeare_recipe.py:tiny', '--workdir',
                       str(workdir), '--no-progress']) == 0
      done.touch()
  return workdir


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
