"""Fully-sharded data parallelism: parameters and optimizer state split over the data axis."""

import shutil

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from jaxpretrain import checkpoint, cli, config as config_lib, ema, loop, parallel
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step
from tests.helpers import (TinyMLP, assert_trees_close, image_batch, run_mesh, tiny_classifier,
                           to_numpy)

STEPS = 5
LR = 1e-2
# TinyMLP on 8x8 images: encoder/kernel (64, 16) is 4 KiB, over the threshold; the head
# kernel (16, 3) and the biases are below it and stay replicated.
MIN_BYTES = 1024
FSDP = dict(fsdp=True, fsdp_min_bytes=MIN_BYTES)
PRETRAIN = 'configs/fashion_mnist_pretrain.py:tiny'


def _init(batch, model=None):
  def init():
    state = create_state(model or TinyMLP(), identity(), tx=optax.adamw(LR),
                         rng=jax.random.PRNGKey(0), example_batch=batch)
    return ema.init(state)
  return init


def _batches():
  return [image_batch(16, seed=s) for s in range(STEPS)]


def _spec(leaf):
  return tuple(leaf.sharding.spec)


def _run_fsdp(state, batches, mesh, layout=None):
  layout = layout or FSDP
  step = parallel.jit(make_train_step(classification(), ema_decay=0.9), mesh, state, **layout)
  for b in batches:
    state, metrics = step(state, parallel.shard_batch(b, mesh))
  return state, metrics


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((64, 16), 8) == P('data', None)
  assert parallel.fsdp_spec((3, 3, 12, 32), 8) == P(None, None, None, 'data')
  assert parallel.fsdp_spec((16, 3), 8) == P('data', None)
  assert parallel.fsdp_spec((3, 5), 8) == P()
  assert parallel.fsdp_spec((64,), 1) == P()


def test_five_adamw_steps_with_fsdp_equal_the_replicated_run():
  batches = _batches()
  mesh = parallel.make_mesh()
  # Every leaf with a dimension divisible by 8 is sharded, BatchNorm statistics included.
  layout = dict(fsdp=True, fsdp_min_bytes=0)
  sharded = parallel.init_state(_init(batches[0], tiny_classifier(norm='batch')), mesh, **layout)
  kernel = ('encoder', 'stage1_conv0', 'kernel')
  stats = ('batch_stats', 'encoder', 'stage1_norm0', 'mean')
  # Shapes first: the state is born sharded; moments and average follow their parameter.
  for tree in (sharded.params, sharded.opt_state[0].mu, sharded.extra['ema']):
    assert _spec(_at(tree, kernel)) == (None, None, None, 'data')
  assert _spec(_at(sharded.model_state, stats)) == ('data',)
  assert _spec(sharded.params['head']['dense']['bias']) == ()
  replicated = to_numpy(sharded)
  state, metrics = _run_fsdp(sharded, batches, mesh, layout)
  ref_state, ref_metrics = run_mesh(replicated, batches, ema_decay=0.9)
  assert ref_metrics['loss'] < 1.05  # it trained (from about ln 3)
  assert _spec(_at(state.params, kernel)) == (None, None, None, 'data')
  assert _spec(_at(state.model_state, stats)) == ('data',)
  assert int(state.step) == STEPS
  for part in ('params', 'opt_state', 'extra', 'model_state'):
    assert_trees_close(getattr(ref_state, part), to_numpy(getattr(state, part)))
  for k in ref_metrics:
    if k != 'model_state':
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, atol=1e-5)


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _device_bytes(tree, device):
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)


def test_each_device_holds_an_eighth_of_the_large_leaves_and_the_small_ones_whole():
  batch = image_batch(16)
  state = parallel.init_state(_init(batch), parallel.make_mesh(), **FSDP)
  held = (state.params, state.opt_state)
  leaves = jax.tree.leaves(held)
  total = sum(x.nbytes for x in leaves)
  small = sum(x.nbytes for x in leaves if x.nbytes < MIN_BYTES)
  # Bound: every leaf of at least MIN_BYTES has a dimension divisible by 8 here, so
  # device 0 holds exactly an eighth of those and the whole of the smaller leaves.
  device_0 = _device_bytes(held, jax.devices()[0])
  assert device_0 == (total - small) // 8 + small
  assert device_0 <= total / 8 + small
  assert small < total / 4  # the bound says something: most bytes are sharded


def test_rules_take_precedence_over_fsdp():
  state = jax.eval_shape(_init(image_batch(16)))
  mesh = parallel.make_mesh()
  shardings = parallel.state_shardings(state, mesh, [('encoder/kernel', P(None, 'data'))],
                                       **FSDP)
  assert tuple(shardings.params['encoder']['kernel'].spec) == (None, 'data')
  assert tuple(shardings.opt_state[0].nu['encoder']['kernel'].spec) == (None, 'data')
  with pytest.raises(ConfigError, match='splits params/head/kernel of shape'):
    parallel.state_shardings(state, mesh, [('head/kernel', P(None, 'data'))])


def test_an_fsdp_checkpoint_saved_on_eight_devices_restores_onto_four_and_one(tmp_path):
  batches = _batches()
  mesh = parallel.make_mesh()
  state, _ = _run_fsdp(parallel.init_state(_init(batches[0]), mesh, **FSDP), batches[:2], mesh)
  with checkpoint.Checkpointer(tmp_path, save_every=1, async_save=False) as ckpt:
    ckpt.save(state, force=True)
  expected = to_numpy(state)
  for devices in (jax.devices()[:4], jax.devices()[:1]):
    target = parallel.abstract_state(state, parallel.make_mesh(devices=devices), **FSDP)
    with checkpoint.open_checkpoints(tmp_path) as reader:
      restored, _ = reader.restore(target)
    kernel = restored.params['encoder']['kernel']
    assert kernel.sharding.mesh.size == len(devices)
    assert len(kernel.addressable_shards) == len(devices)
    if len(devices) > 1:
      assert kernel.addressable_shards[0].data.shape == (64 // len(devices), 16)
    jax.tree.map(np.testing.assert_array_equal, expected, to_numpy(restored))


def _cli(workdir, *overrides):
  args = ['pretrain', '--config', PRETRAIN, '--workdir', str(workdir), '--no-progress',
          '--config.parallel.fsdp=True', '--config.parallel.fsdp_min_bytes=1024',
          '--config.checkpoint.keep_last=2', *[f'--config.{o}' for o in overrides]]
  assert cli.main(args) == 0


def test_an_fsdp_cli_run_trains_saves_and_resumes_as_the_uninterrupted_run(tmp_path):
  _cli(tmp_path / 'a')
  final = checkpoint.restore_params(tmp_path / 'a', step=6)
  # Interrupt after step 3: drop the last checkpoint and rerun in the same work directory.
  shutil.rmtree(tmp_path / 'a' / 'checkpoints' / '6')
  _cli(tmp_path / 'a')
  records = loop.read_metrics(tmp_path / 'a')
  assert all(np.isfinite(r['loss']) for r in records if r['split'] == 'train')
  resumed = checkpoint.restore_params(tmp_path / 'a', step=6)
  jax.tree.map(np.testing.assert_array_equal, final, resumed)
  # The sharded run's checkpoint scores the same evaluated with FSDP or replicated.
  config = config_lib.override(config_lib.load(PRETRAIN), ['data.eval_batch_size=32'])
  sharded = config_lib.override(config, ['parallel.fsdp=True', 'parallel.fsdp_min_bytes=1024'])
  scores = [loop.evaluate(c, tmp_path / 'a', split='test[:32]') for c in (sharded, config)]
  assert scores[0]['examples'] == 32
  for k in scores[1]:
    np.testing.assert_allclose(scores[0][k], scores[1][k], rtol=1e-5)


def _run_state(*overrides):
  config = config_lib.override(config_lib.load(PRETRAIN), list(overrides))
  train, _ = loop.run_splits(config)
  example = {k: v[:16] for k, v in train.arrays.items()}
  return loop.initial_state(config, None, 6, example)


def test_parallel_rules_of_a_config_shard_what_they_match_and_come_before_fsdp():
  rule = "parallel.rules=(('hidden/kernel', (None, 'data')),)"
  state = _run_state(rule)
  assert _spec(state.params['pretext_head']['hidden']['kernel']) == (None, 'data')
  assert _spec(state.opt_state[0].mu['pretext_head']['hidden']['kernel']) == (None, 'data')
  assert _spec(state.params['encoder']['stage1_conv0']['kernel']) == ()
  state = _run_state(rule, 'parallel.fsdp=True', 'parallel.fsdp_min_bytes=1024')
  assert _spec(state.params['pretext_head']['hidden']['kernel']) == (None, 'data')
  assert _spec(state.params['encoder']['stage1_conv0']['kernel']) == (None, None, None, 'data')


@pytest.mark.parametrize('override, message', [
    ("parallel.rules=(('.*embedding', ('model', None)),)", "names a mesh axis other than 'data'"),
    ("parallel.rules=(('.*embedding',),)", 'is not a pair of a regex and a spec'),
    ("parallel.rules=(('(', ('data',)),)", 'has an invalid regex'),
    ("parallel.rules=(('.*', 'data'),)", 'has a spec that is not a tuple'),
])
def test_a_bad_sharding_rule_is_a_config_error_naming_it(override, message):
  config = config_lib.override(config_lib.load(PRETRAIN), [override])
  with pytest.raises(ConfigError, match=f'parallel.rules: .*{message}'):
    config_lib.check_values(config)


@pytest.mark.parametrize('mode', ['pmap', 'single'])
def test_fsdp_outside_a_mesh_is_a_config_error(mode, tmp_path):
  config = config_lib.override(config_lib.load(PRETRAIN),
                               ['parallel.fsdp=True', f'parallel.mode={mode}'])
  with pytest.raises(ConfigError, match=f"parallel.mode='{mode}' keeps a whole copy"):
    loop.train(config, tmp_path, progress=False)
  assert not (tmp_path / 'checkpoints').exists()


def test_a_rule_that_splits_an_indivisible_dimension_is_one_line_from_the_cli(tmp_path, capsys):
  rule = "--config.parallel.rules=(('stage0_conv0/kernel', ('data',)),)"
  assert cli.main(['pretrain', '--config', PRETRAIN, '--workdir', str(tmp_path), '--no-progress',
                   rule]) == 2
  err = capsys.readouterr().err
  assert "splits params/encoder/stage0_conv0/kernel of shape (3, 3, 4, 4) 8 ways" in err
  assert 'Traceback' not in err
