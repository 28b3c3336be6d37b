"""The fine-tuning transforms: shape adapters, probes, LoRA, per-layer rates, penalties."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import checkpoint, finetune
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, ConfigError
from jaxpretrain.models import PRESETS, Classifier, ConvEncoder, SequenceClassifier
from jaxpretrain.models.core import make_apply_fn
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step
from tests.helpers import (assert_trees_close, image_batch, run_mesh, run_pmap, run_single,
                           tiny_classifier, to_numpy)

BATCH = image_batch(8)
STEP = jax.jit(make_train_step(classification()))


def _create(transform, model=None, tx=None):
  return finetune.create_state(model or tiny_classifier(), transform,
                               tx=tx or optax.adam(1e-2), rng=jax.random.PRNGKey(1),
                               example_batch=BATCH)


def _base_params():
  return _create(finetune.identity()).params


def _train(state, steps=3):
  for s in range(steps):
    state, _ = STEP(state, image_batch(8, seed=s))
  return state


def _logits(state, batch=BATCH):
  return state.apply_fn(state.variables(), batch, train=False)['logits']


def _paths(tree):
  return set(tree_lib.flatten(tree))


# Shape adapters.

def test_resize_vocab_keeps_old_rows_and_inits_new_ones():
  old = jnp.arange(12.0).reshape(4, 3)
  init = -jnp.ones((6, 3))
  grown = finetune.resize_vocab()(old, init)
  np.testing.assert_array_equal(grown[:4], old)
  np.testing.assert_array_equal(grown[4:], -1.0)
  np.testing.assert_array_equal(finetune.resize_vocab()(old, jnp.zeros((2, 3))), old[:2])
  bias = finetune.resize_vocab(axis=-1)(jnp.arange(4.0), jnp.zeros(5))
  np.testing.assert_array_equal(bias, [0, 1, 2, 3, 0])
  with pytest.raises(CheckpointMismatchError, match='one axis only'):
    finetune.resize_vocab()(old, jnp.zeros((6, 4)))


def test_interpolate_positions_sequence_and_grid_with_class_token():
  seq = jnp.stack([jnp.linspace(0, 1, 5), jnp.linspace(2, 3, 5)], axis=-1)  # (5, 2)
  longer = finetune.interpolate_positions()(seq, jnp.zeros((9, 2)))
  assert longer.shape == (9, 2)
  np.testing.assert_allclose(longer[:, 0], np.linspace(0, 1, 9), atol=0.07)
  assert np.all(np.diff(longer[:, 0]) > 0)
  # A ViT's (1, 1 + 4*4, D) table to a 6x6 grid: the class token is copied.
  table = jax.random.normal(jax.random.PRNGKey(0), (1, 17, 3))
  grid = finetune.interpolate_positions(prefix_tokens=1, grid=True)(table, jnp.zeros((1, 37, 3)))
  assert grid.shape == (1, 37, 3)
  np.testing.assert_array_equal(grid[:, 0], table[:, 0])
  same = finetune.interpolate_positions(prefix_tokens=1, grid=True)(table, jnp.zeros((1, 17, 3)))
  np.testing.assert_allclose(same, table, atol=1e-6)
  with pytest.raises(CheckpointMismatchError, match='square'):
    finetune.interpolate_positions(grid=True)(table[:, 1:], jnp.zeros((1, 15, 3)))


def test_graft_reshapes_by_rule_and_reports_it():
  model = {'embed': {'embedding': jnp.zeros((6, 3))}, 'head': {'bias': jnp.zeros(2)}}
  saved = {'embed': {'embedding': jnp.ones((4, 3))}, 'head': {'bias': jnp.ones(2)}}
  with pytest.raises(CheckpointMismatchError, match=r"'embed/embedding'.*\(4, 3\).*\(6, 3\)"):
    finetune.graft(model, saved)
  out, report = finetune.graft(model, saved, reshape=[('embed/.*', 'resize_vocab')])
  assert report.reshaped == ('embed/embedding: (4, 3) → (6, 3)',)
  assert 'reshaped' in str(report) and len(report.loaded) == 2
  np.testing.assert_array_equal(out['embed']['embedding'][:4], 1.0)
  np.testing.assert_array_equal(out['embed']['embedding'][4:], 0.0)
  spec = finetune.from_pretrained(saved, reshape=[('x', finetune.resize_vocab(axis=-1))]).spec
  assert spec[0]['reshape'] == [['x', 'resize_vocab', {'axis': -1}]]
  with pytest.raises(CheckpointMismatchError, match='unknown shape adapter'):
    finetune.graft(model, saved, reshape=[('embed/.*', 'stretch')])


def test_from_pretrained_loads_the_best_step(tmp_path):
  state = _create(finetune.identity())
  later = _train(state, 2)
  with checkpoint.Checkpointer(tmp_path, save_every=1, keep_last=2, keep_best=1,
                               best_metric='accuracy') as ckpt:
    ckpt.save(state.replace(step=np.int32(1)), metrics={'accuracy': 0.9})
    ckpt.save(later.replace(step=np.int32(2)), metrics={'accuracy': 0.1})
  best = _create(finetune.from_pretrained(str(tmp_path), step='best'))
  latest = _create(finetune.from_pretrained(str(tmp_path)))
  assert_trees_close(best.params, state.params, atol=0, rtol=0)
  assert_trees_close(latest.params, later.params, atol=0, rtol=0)


def test_from_pretrained_brings_the_batch_norm_statistics_of_what_it_grafts(tmp_path):
  model = tiny_classifier(norm='batch')
  trained = _train(_create(finetune.identity(), model))
  stats = trained.model_state['batch_stats']
  with checkpoint.Checkpointer(tmp_path, save_every=1) as ckpt:
    ckpt.save(trained)
  fresh = _create(finetune.identity(), model).model_state['batch_stats']
  for path in tree_lib.flatten(stats):
    # Training moved every statistic away from its initial value, so a copy shows.
    assert not np.allclose(tree_lib.flatten(stats)[path], tree_lib.flatten(fresh)[path])
  grafted = _create(finetune.chain(finetune.from_pretrained(str(tmp_path), select='encoder/.*'),
                                   finetune.new_head()), model)
  assert_trees_close(grafted.model_state['batch_stats'], stats, atol=0, rtol=0)
  assert_trees_close(_logits(grafted.replace(params=trained.params)), _logits(trained),
                     atol=0, rtol=0)
  # Statistics outside `select` keep their initial values.
  kept = _create(finetune.from_pretrained(str(tmp_path), select='head/.*'), model)
  assert_trees_close(kept.model_state['batch_stats'], fresh, atol=0, rtol=0)
  # A parameter tree carries no statistics.
  from_tree = _create(finetune.from_pretrained(trained.params), model)
  assert_trees_close(from_tree.model_state['batch_stats'], fresh, atol=0, rtol=0)


# Which parameters train.

def test_linear_probe_and_bitfit_choose_what_trains():
  probe = _create(finetune.linear_probe())
  assert _paths(probe.params) == {'head/dense/kernel', 'head/dense/bias'}
  bit = _create(finetune.bitfit(head=None), tiny_classifier(norm='layer'))
  assert _paths(bit.params) == {'encoder/stage0_norm0/bias', 'encoder/stage1_norm0/bias',
                                'head/dense/bias'}
  with_head = _create(finetune.bitfit(), tiny_classifier(norm='layer'))
  assert _paths(with_head.params) == _paths(bit.params) | {'head/dense/kernel'}
  trained = _train(bit, 2)
  jax.tree.map(np.testing.assert_array_equal, trained.frozen, bit.frozen)


def test_unfreeze_schedule_starts_each_group_fresh_at_its_step():
  lr = 1e-2
  state = _create(finetune.unfreeze_schedule([(0, 'head/.*'), (2, 'encoder/stage1.*')]),
                  tx=optax.adam(lr))
  assert 'stage0_conv0' in state.frozen['encoder']
  history = [state]
  for s in range(4):
    history.append(STEP(history[-1], image_batch(8, seed=s))[0])
  kernel = [np.asarray(h.params['encoder']['stage1_conv0']['kernel']) for h in history]
  head = [np.asarray(h.params['head']['dense']['kernel']) for h in history]
  np.testing.assert_array_equal(kernel[1], kernel[0])
  np.testing.assert_array_equal(kernel[2], kernel[0])
  assert not np.allclose(head[1], head[0])
  # The group's first Adam step is a fresh one: elements move by lr (less where |g| ~ eps).
  moved = np.abs(kernel[3] - kernel[2])
  np.testing.assert_allclose(np.median(moved), lr, rtol=1e-3)
  assert moved.max() <= lr * (1 + 1e-4)
  with pytest.raises(ConfigError, match='unfreeze_schedule'):
    finetune.unfreeze_schedule([(-1, '.*')])


# LoRA.

class _Stacked(nn.Module):
  """Three dense layers whose kernels are stacked on a leading axis, as nn.scan makes."""

  @nn.compact
  def __call__(self, batch, *, train=False):
    x = batch['image'].reshape(batch['image'].shape[0], -1)[:, :6]
    kernels = self.param('layers', nn.initializers.lecun_normal(), (3, 6, 6))
    for k in kernels:
      x = jnp.tanh(x @ k)
    return {'logits': nn.Dense(3, name='head')(x)}


class _Attention(nn.Module):
  """Self-attention over the image's rows, with Flax's (embed, heads, head_dim) kernels."""

  @nn.compact
  def __call__(self, batch, *, train=False):
    x = nn.Dense(8, name='embed')(batch['image'][..., 0])  # (B, rows, 8)
    x = nn.MultiHeadDotProductAttention(num_heads=2, name='attn')(x)
    return {'logits': nn.Dense(3, name='head')(x.mean(axis=1))}


def _flip_b(state, seed=7):
  """The LoRA state with nonzero `b` factors, as after some training."""
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.normal(jax.random.PRNGKey(seed), x.shape) * 0.1
      if tree_lib.key_path_str(p).endswith('/b') else x, state.params)
  return state.replace(params=params)


@pytest.mark.parametrize('model, targets, stacked, input_axes', [
    (None, 'encoder/.*kernel', None, ()),
    (_Stacked(), 'layers', 'layers', ()),
    (_Attention(), 'attn/.*kernel', None, [('.*(query|key|value)/kernel', 1)]),
])
def test_lora_at_init_is_the_base_model_and_merges_exactly(model, targets, stacked, input_axes):
  base = _create(finetune.identity(), model)
  t = finetune.lora(4, 8.0, targets=targets, stacked=stacked, input_axes=input_axes)
  adapted = _create(finetune.chain(finetune.from_pretrained(base.params), t), model)
  assert all(p.startswith(('lora/', 'head/')) for p in _paths(adapted.params))
  np.testing.assert_array_equal(_logits(adapted), _logits(base))
  trained = _train(_flip_b(adapted), 2)
  merged = finetune.merge(trained.all_params(), t)
  assert _paths(merged) == _paths(base.params)
  plain = make_apply_fn(model or tiny_classifier())(
      {'params': merged, **trained.model_state}, BATCH)['logits']
  np.testing.assert_allclose(plain, _logits(trained), atol=1e-6)
  assert not np.allclose(plain, _logits(base), atol=1e-3)
  # Each update has rank <= 4 as a map from the kernel's input axes to its output axes.
  flat_merged, flat_base = tree_lib.flatten(merged), tree_lib.flatten(base.params)
  for path in tree_lib.flatten(trained.params['lora']):
    kernel_path = path.rsplit('/', 1)[0]
    delta = np.asarray(flat_merged[kernel_path] - flat_base[kernel_path], np.float64)
    n_in = next((n for r, n in input_axes if re.fullmatch(r, kernel_path)), delta.ndim - 1)
    matrices = delta.reshape(-1, *delta.shape[-2:]) if stacked else [delta.reshape(
        int(np.prod(delta.shape[:n_in])), -1)]
    for m in matrices:
      assert np.linalg.matrix_rank(m, tol=1e-6) <= 4


def test_lora_adapters_export_and_load_alone(tmp_path):
  base = _create(finetune.identity())
  t = finetune.chain(finetune.from_pretrained(base.params), finetune.new_head(),
                     finetune.lora(4, targets='encoder/.*kernel'))
  trained = _train(_flip_b(_create(t)), 2)
  out = finetune.export_adapters(tmp_path / 'adapters', trained.all_params(), t)
  meta = json.loads((out / 'adapters.json').read_text())
  assert set(meta['params']) == {p for p in _paths(trained.params)}  # no base weight
  assert meta['lora']['rank'] == 4
  restored = _create(finetune.chain(finetune.from_pretrained(base.params),
                                    finetune.load_adapters(out)))
  np.testing.assert_array_equal(_logits(restored), _logits(trained))
  with pytest.raises(FileNotFoundError, match='adapters.json'):
    finetune.load_adapters(tmp_path / 'nothing')


def test_lora_dropout_changes_training_outputs_only():
  t = finetune.lora(4, targets='encoder/.*kernel', dropout=0.5)
  state = _flip_b(_create(t))
  rngs = lambda s: {'dropout': jax.random.PRNGKey(s)}
  train = lambda s: state.apply_fn(state.variables(), BATCH, train=True, rngs=rngs(s))['logits']
  assert not np.allclose(train(0), train(1))
  np.testing.assert_array_equal(train(0), train(0))
  evals = [state.apply_fn(state.variables(), BATCH, train=False, rngs=rngs(s))['logits']
           for s in (0, 1)]
  np.testing.assert_array_equal(*evals)


def test_lora_rejects_bad_targets():
  with pytest.raises(ConfigError, match='matches 0 parameter'):
    _create(finetune.lora(4, targets='nothing/.*'))
  with pytest.raises(ConfigError, match='too small'):
    _create(finetune.lora(4, targets='.*bias'))
  with pytest.raises(ConfigError, match='rank'):
    finetune.lora(0)


def _opt_bytes(transform, model, batch=None):
  state = jax.eval_shape(lambda: finetune.create_state(
      model, transform, tx=optax.adamw(1e-3), rng=jax.random.PRNGKey(0),
      example_batch=batch or image_batch(2, size=28)))
  return tree_lib.nbytes(state.opt_state), tree_lib.size(state.params)


def test_lora_rank_8_keeps_under_5_percent_of_the_optimizer_state():
  # ResNet-like widths (64 to 512 channels), head included in both.
  model = Classifier(ConvEncoder(stages=((64, 128), (256, 512)), norm='group'), 10)
  full, full_count = _opt_bytes(finetune.identity(), model)
  lora, lora_count = _opt_bytes(finetune.lora(8, targets='encoder/.*kernel'), model)
  probe, _ = _opt_bytes(finetune.linear_probe(), model)
  assert lora / full < 0.05, (lora, full)
  assert lora_count / full_count < 0.05
  # Adam keeps two moments per trainable element, and nothing for frozen ones.
  assert probe == 2 * 4 * (512 * 10 + 10) + 4


def test_lora_rank_8_on_bert_mini_keeps_under_5_percent_of_the_optimizer_state():
  model = SequenceClassifier(PRESETS['bert_mini'], num_classes=2)
  batch = {'input_ids': np.zeros((2, 16), np.int32), 'attention_mask': np.ones((2, 16), np.int32)}
  full, _ = _opt_bytes(finetune.identity(), model, batch)
  # Every attention and feed-forward projection adapted; the classifier trains whole.
  lora, _ = _opt_bytes(finetune.lora(8, targets=r'encoder/layer_\d+/.*kernel'), model, batch)
  assert lora / full < 0.05, (lora, full)


# Per-parameter learning rates and penalties.

def _one_sgd_update(transform, model=None, lr=0.1):
  state = _create(transform, model, tx=optax.sgd(lr))
  new = STEP(state, BATCH)[0]
  return {p: np.asarray(v) for p, v in tree_lib.flatten(
      jax.tree.map(lambda a, b: a - b, new.params, state.params)).items()}


def test_layerwise_lr_decay_scales_by_depth():
  ids, layers = finetune.layer_ids(_base_params())
  assert layers == 2
  assert ids == {'encoder/stage0_conv0/kernel': 1, 'encoder/stage0_conv0/bias': 1,
                 'encoder/stage1_conv0/kernel': 2, 'encoder/stage1_conv0/bias': 2,
                 'head/dense/kernel': 3, 'head/dense/bias': 3}
  plain = _one_sgd_update(finetune.identity())
  decayed = _one_sgd_update(finetune.layerwise_lr_decay(0.5))
  for path, factor in [('encoder/stage0_conv0/kernel', 0.25),
                       ('encoder/stage1_conv0/kernel', 0.5), ('head/dense/kernel', 1.0)]:
    # Updates read back as differences of parameters: float32 rounding at ~1e-7.
    np.testing.assert_allclose(decayed[path], factor * plain[path], rtol=1e-5, atol=1e-7)


def test_layer_ids_of_embeddings_stacked_layers_and_adapters():
  params = {'embeddings': {'word': {'embedding': np.zeros((9, 4))}},
            'layers': {'attn': {'kernel': np.zeros((3, 4, 4))}},
            'final_norm': {'scale': np.zeros(4)},
            'lora': {'layers': {'attn': {'kernel': {'a': np.zeros((3, 4, 2))}}}}}
  ids, layers = finetune.layer_ids(params, stacked='layers/.*')
  assert layers == 3
  assert ids['embeddings/word/embedding'] == 0 and ids['final_norm/scale'] == 4
  np.testing.assert_array_equal(ids['layers/attn/kernel'], [1, 2, 3])
  np.testing.assert_array_equal(ids['lora/layers/attn/kernel/a'], [1, 2, 3])
  decayed = _one_sgd_update(finetune.layerwise_lr_decay(0.5, stacked='layers'), _Stacked())
  plain = _one_sgd_update(finetune.identity(), _Stacked())
  np.testing.assert_allclose(decayed['layers'], np.array([0.125, 0.25, 0.5])[:, None, None]
                             * plain['layers'], rtol=1e-5, atol=1e-7)


def test_l2sp_pulls_toward_the_pretrained_values_and_keeps_them_in_state():
  weight, lr = 0.5, 0.1
  start = _create(finetune.l2sp(weight), tx=optax.sgd(lr))
  moved = start.replace(params=jax.tree.map(lambda x: x + 1.0, start.params))
  zero = jax.tree.map(jnp.zeros_like, moved.params)
  updates, _ = moved.tx.update(zero, moved.opt_state, moved.params)
  flat = tree_lib.flatten(updates)
  np.testing.assert_allclose(flat['encoder/stage0_conv0/kernel'], -lr * weight, rtol=1e-6)
  np.testing.assert_array_equal(flat['head/dense/kernel'], 0.0)  # the head is not pulled
  anchors = [x for x in jax.tree.leaves(start.opt_state)]
  assert any(np.array_equal(a, start.params['encoder']['stage0_conv0']['kernel'])
             for a in anchors)


def test_weight_decay_with_adam_is_adamw_without_decaying_vectors():
  lr, wd = 1e-2, 0.1
  mine = _create(finetune.weight_decay(wd, learning_rate=lr), tx=optax.adam(lr))
  ref = _create(finetune.identity(), tx=optax.adamw(
      lr, weight_decay=wd, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  assert_trees_close(_train(mine).params, _train(ref).params, atol=1e-6)
  only_head = _create(finetune.weight_decay(wd, learning_rate=lr, mask='head/.*'),
                      tx=optax.sgd(0.0))
  new = STEP(only_head, BATCH)[0]
  np.testing.assert_allclose(new.params['head']['dense']['bias'],
                             (1 - lr * wd) * only_head.params['head']['dense']['bias'])
  np.testing.assert_array_equal(new.params['encoder']['stage0_conv0']['kernel'],
                                only_head.params['encoder']['stage0_conv0']['kernel'])


# Composition and parallelism.

def test_chain_laws_hold_with_lora_and_rates():
  parts = [finetune.from_pretrained(_base_params()), finetune.lora(2, targets='encoder/.*kernel'),
           finetune.layerwise_lr_decay(0.7)]
  flat = _train(_create(finetune.chain(*parts)), 2)
  nested = _train(_create(finetune.chain(parts[0], finetune.chain(*parts[1:]))), 2)
  with_identity = _train(_create(finetune.chain(finetune.identity(), *parts)), 2)
  for other in (nested, with_identity):
    assert_trees_close(flat.params, other.params, atol=0, rtol=0)


def _every_transform():
  pre = _base_params()
  return {
      'from_pretrained+new_head': finetune.chain(finetune.from_pretrained(pre),
                                                 finetune.new_head()),
      'freeze': finetune.freeze('encoder/stage0.*'),
      'linear_probe': finetune.linear_probe(),
      'bitfit': finetune.bitfit(),
      'unfreeze_schedule': finetune.unfreeze_schedule([(0, 'head/.*'), (1, '.*')]),
      # Without dropout: under pmap each device draws its own randomness.
      'lora': finetune.lora(2, targets='encoder/.*kernel'),
      'layerwise_lr_decay': finetune.layerwise_lr_decay(0.5),
      'lr_multipliers': finetune.lr_multipliers([('head/.*', 3.0)]),
      'l2sp': finetune.l2sp(0.1),
      'weight_decay': finetune.weight_decay(0.1, learning_rate=1e-2),
  }


@pytest.mark.parametrize('name', list(_every_transform()))
def test_every_transform_agrees_on_one_device_a_mesh_and_pmap(name):
  batches = [image_batch(16, seed=s) for s in range(3)]
  init = to_numpy(_create(_every_transform()[name]))
  (ref, ref_metrics), *others = [run(init, batches) for run in (run_single, run_mesh, run_pmap)]
  assert np.isfinite(ref_metrics['loss'])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), ref.params, init.params)
  assert any(jax.tree.leaves(changed))
  for state, metrics in others:
    assert_trees_close(ref.params, state.params, atol=2e-5)
    assert_trees_close(ref.opt_state, state.opt_state, atol=2e-5)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], atol=1e-5)


def _step_flops(transform):
  state = _create(transform)
  compiled = jax.jit(make_train_step(classification())).lower(state, BATCH).compile()
  analysis = compiled.cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


def test_frozen_parameters_cost_no_backward_computation():
  full, probe = _step_flops(finetune.identity()), _step_flops(finetune.linear_probe())
  frozen_bottom = _step_flops(finetune.freeze('encoder/stage0.*'))
  # A probe's step is the forward pass and the head's gradient: well under the full step.
  assert probe < 0.6 * full
  assert probe < frozen_bottom < full
