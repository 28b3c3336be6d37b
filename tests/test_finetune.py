"""Fine-tuning transforms: composition laws, grafting, freezing."""

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import finetune
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, ConfigError
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step
from tests.helpers import TinyMLP, image_batch, tiny_classifier

BATCH = image_batch(8)


def _create(transform, model=None):
  return finetune.create_state(model or tiny_classifier(), transform, tx=optax.adam(1e-2),
                               rng=jax.random.PRNGKey(1), example_batch=BATCH)


def _pretrained():
  return _create(finetune.identity(), tiny_classifier(num_classes=7)).params


def _flat(state):
  return {p: np.asarray(v) for p, v in tree_lib.flatten(state.all_params()).items()}


def test_identity_changes_nothing():
  a, b = _create(finetune.identity()), _create(finetune.chain())
  for p, v in _flat(a).items():
    np.testing.assert_array_equal(v, _flat(b)[p])


def test_chain_is_associative():
  pre = _pretrained()
  parts = [finetune.from_pretrained(pre, select='encoder/.*'), finetune.new_head(),
           finetune.freeze('encoder/stage0.*')]
  flat = _create(finetune.chain(*parts))
  nested = _create(finetune.chain(parts[0], finetune.chain(parts[1], parts[2])))
  assert tree_lib.flatten(flat.params).keys() == tree_lib.flatten(nested.params).keys()
  for p, v in _flat(flat).items():
    np.testing.assert_array_equal(v, _flat(nested)[p])
  assert [s['name'] for s in finetune.chain(*parts).spec] == [
      'from_pretrained', 'new_head', 'freeze']


def test_from_pretrained_grafts_selected_and_reports():
  pre = _pretrained()
  new = finetune.create_state(tiny_classifier(), finetune.identity(), tx=optax.adam(1e-2),
                              rng=jax.random.PRNGKey(1), example_batch=BATCH).params
  grafted, report = finetune.graft(new, pre, select='encoder/.*')
  assert len(report.loaded) == 4 and not report.missing and not report.unexpected
  np.testing.assert_array_equal(grafted['encoder']['stage0_conv0']['kernel'],
                                pre['encoder']['stage0_conv0']['kernel'])
  np.testing.assert_array_equal(grafted['head']['dense']['kernel'], new['head']['dense']['kernel'])


def test_from_pretrained_shape_mismatch_names_parameter_and_shapes():
  with pytest.raises(CheckpointMismatchError,
                     match=r"'head/dense/bias' has shape \(7,\) in the checkpoint but \(3,\)"):
    _create(finetune.from_pretrained(_pretrained()))


def test_from_pretrained_rename_and_strict():
  pre = {'backbone': _pretrained()['encoder']}
  state = _create(finetune.from_pretrained(pre, select='encoder/.*',
                                           rename=[('backbone/(.*)', r'encoder/\1')],
                                           strict=True))
  np.testing.assert_array_equal(state.params['encoder']['stage1_conv0']['bias'],
                                pre['backbone']['stage1_conv0']['bias'])
  with pytest.raises(CheckpointMismatchError, match='loaded no parameter'):
    _create(finetune.from_pretrained(pre, select='encoder/.*'))
  extra = {'encoder': {**pre['backbone'], 'extra': {'kernel': np.ones(2)}}}
  with pytest.raises(CheckpointMismatchError, match='unexpected.*encoder/extra/kernel'):
    _create(finetune.from_pretrained(extra, select='encoder/.*', strict=True))


def test_new_head_reinitialises_only_the_head():
  base = _create(finetune.identity())
  fresh = _create(finetune.new_head('head/.*'))
  np.testing.assert_array_equal(_flat(base)['encoder/stage0_conv0/kernel'],
                                _flat(fresh)['encoder/stage0_conv0/kernel'])
  assert not np.allclose(_flat(base)['head/dense/kernel'], _flat(fresh)['head/dense/kernel'])
  np.testing.assert_array_equal(_flat(fresh)['head/dense/bias'], 0.0)


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state():
  state = _create(finetune.freeze('encoder/.*'))
  assert set(tree_lib.flatten(state.params)) == {'head/dense/bias', 'head/dense/kernel'}
  assert 'encoder' in state.frozen
  opt_paths = [p for p in tree_lib.flatten(state.opt_state[0].mu)]
  assert all(p.startswith('head/') for p in opt_paths)
  new, _ = jax.jit(make_train_step(classification()))(state, BATCH)
  jax.tree.map(np.testing.assert_array_equal, new.frozen, state.frozen)
  assert not np.allclose(new.params['head']['dense']['kernel'],
                         state.params['head']['dense']['kernel'])


def test_freeze_rules_must_cover_every_parameter():
  with pytest.raises(ConfigError, match='uncovered.*catch-all'):
    _create(finetune.freeze([('encoder/.*', True)]))
  state = _create(finetune.freeze([('head/.*', False), ('.*', True)]))
  assert set(tree_lib.flatten(state.params)) == {'head/dense/bias', 'head/dense/kernel'}


def test_batch_norm_statistics_live_in_model_state_and_update():
  state = finetune.create_state(TinyMLP(batch_norm=True), finetune.identity(),
                                tx=optax.adam(1e-2), rng=jax.random.PRNGKey(0),
                                example_batch=BATCH)
  assert 'batch_stats' in state.model_state
  new, _ = jax.jit(make_train_step(classification()))(state, BATCH)
  assert not np.allclose(new.model_state['batch_stats']['norm']['mean'],
                         state.model_state['batch_stats']['norm']['mean'])


def test_lr_multipliers_scale_each_update():
  base = _create(finetune.identity())
  scaled = _create(finetune.lr_multipliers([('head/.*', 10.0), ('encoder/stage0.*', 0.0)]))
  step = jax.jit(make_train_step(classification()))
  new_base, _ = step(base, BATCH)
  new_scaled, _ = step(scaled, BATCH)
  delta = lambda new, old, p: _flat(new)[p] - _flat(old)[p]
  for p in ('head/dense/kernel', 'head/dense/bias'):
    np.testing.assert_allclose(delta(new_scaled, scaled, p), 10 * delta(new_base, base, p),
                               rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(delta(new_scaled, scaled, 'encoder/stage0_conv0/kernel'), 0)
  np.testing.assert_allclose(delta(new_scaled, scaled, 'encoder/stage1_conv0/kernel'),
                             delta(new_base, base, 'encoder/stage1_conv0/kernel'), rtol=1e-5)
  with pytest.raises(ConfigError, match='lr_multipliers rules leave'):
    _create(finetune.lr_multipliers([('head/.*', 2.0)], default=None))
