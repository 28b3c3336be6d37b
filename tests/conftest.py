"""Test set-up: 8 fake CPU devices, configured before any JAX computation."""

import jax

jax.config.update('jax_num_cpu_devices', 8)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def text_recipe_run(tmp_path_factory):
  """The tiny text recipe's work directory: BERT MLM (`pretrain/`), both genre classifiers
  (`finetune/`, `scratch/`) and the GPT CLM (`lm/`), run once for every test that reads them."""
  from jaxpretrain import cli  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('shakespeare')
  assert cli.main(['recipe', '--config', 'configs/shakespeare_recipe.py:tiny', '--workdir',
                   str(workdir), '--no-progress']) == 0
  return workdir
