"""Transformer encoders and decoders: shapes, masks, causality, packing, tying, presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import layer_ids
from jaxpretrain.models import (PRESETS, BertForMaskedLM, GPTForCausalLM, Regressor,
                                SequenceClassifier, TokenClassifier, Transformer, init_variables,
                                make_apply_fn)
from jaxpretrain.models.transformer import alibi_bias, alibi_slopes

V, D, B, L = 101, 32, 2, 8
KEY = jax.random.PRNGKey(0)


def tiny(preset, **overrides):
  """A preset's family (norm placement, causality, offsets, token types) at toy size."""
  cfg = PRESETS[preset]
  small = dict(vocab_size=V, hidden_size=D, num_layers=2, num_heads=2, intermediate_size=64,
               max_position_embeddings=16 + cfg.position_offset,
               pad_token_id=min(cfg.pad_token_id, V - 1))
  return dataclasses.replace(cfg, **{**small, **overrides})


def text_batch(seed=0, length=L):
  ids = np.random.default_rng(seed).integers(3, V, (B, length)).astype(np.int32)
  mask = np.ones((B, length), np.int32)
  mask[1, length - 3:] = 0
  return {'input_ids': ids, 'attention_mask': mask}


def build(module, batch=None):
  batch = batch or text_batch()
  return make_apply_fn(module), init_variables(module, KEY, batch)['params'], batch


@pytest.mark.parametrize('preset,model', [('bert_base', BertForMaskedLM),
                                          ('roberta_base', BertForMaskedLM),
                                          ('distilbert_base', BertForMaskedLM),
                                          ('gpt2_small', GPTForCausalLM)])
def test_lm_shapes_and_finite(preset, model):
  apply_fn, params, batch = build(model(tiny(preset)))
  out = apply_fn({'params': params}, batch)
  assert out['logits'].shape == (B, L, V)
  assert out['hidden_states'].shape == (B, L, D)
  assert out['features'].shape == (B, D)
  assert ('pooled' in out) == PRESETS[preset].pooler
  for x in jax.tree.leaves(out):
    assert np.isfinite(np.asarray(x)).all()


def test_masked_positions_logits_equal_gathered_full_logits():
  apply_fn, params, batch = build(BertForMaskedLM(tiny('roberta_base')))
  masked_positions = np.array([[1, 4, 6], [0, 2, 3]], np.int32)
  full = apply_fn({'params': params}, batch)['logits']
  at_masks = apply_fn({'params': params}, {**batch, 'masked_positions': masked_positions})['logits']
  assert at_masks.shape == (B, 3, V)
  np.testing.assert_allclose(at_masks, np.take_along_axis(full, masked_positions[..., None], 1),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('pooling', [None, 'pooled', 'first', 'last', 'mean'])
def test_sequence_classifier_poolings(pooling):
  apply_fn, params, batch = build(SequenceClassifier(tiny('bert_base'), 3, pooling=pooling))
  out = apply_fn({'params': params}, batch)
  assert out['logits'].shape == (B, 3) and out['features'].shape == (B, D)
  assert np.isfinite(np.asarray(out['logits'])).all()
  hidden = np.asarray(out['hidden_states'])
  if pooling == 'mean':
    np.testing.assert_allclose(out['features'][1], hidden[1, :L - 3].mean(0), atol=1e-5)
  if pooling == 'last':
    np.testing.assert_allclose(out['features'][1], hidden[1, L - 4], atol=1e-6)


def test_token_classifier_regressor_shapes_and_pooled_needs_pooler():
  cfg = tiny('distilbert_base')
  apply_fn, params, batch = build(TokenClassifier(cfg, 5))
  out = apply_fn({'params': params}, batch)
  assert out['logits'].shape == (B, L, 5) and out['features'].shape == (B, L, D)
  apply_fn, params, batch = build(Regressor(cfg))
  assert apply_fn({'params': params}, batch)['logits'].shape == (B,)
  with pytest.raises(ConfigError, match='pooler'):
    build(SequenceClassifier(cfg, 3, pooling='pooled'))


def test_padding_ids_do_not_change_real_positions():
  apply_fn, params, batch = build(BertForMaskedLM(tiny('bert_base')))
  ids = batch['input_ids'].copy()
  ids[1, L - 3:] = [7, 50, 99]
  a = apply_fn({'params': params}, batch)
  b = apply_fn({'params': params}, {**batch, 'input_ids': ids})
  np.testing.assert_allclose(a['logits'][0], b['logits'][0], atol=1e-5)
  np.testing.assert_allclose(a['logits'][1, :L - 3], b['logits'][1, :L - 3], atol=1e-5)
  np.testing.assert_allclose(a['features'], b['features'], atol=1e-5)
  assert not np.allclose(a['logits'][1, L - 3:], b['logits'][1, L - 3:])


def test_decoder_is_causal():
  """d logits[t] / d (position embedding of t') is zero exactly when t' > t."""
  module = GPTForCausalLM(tiny('gpt2_small'))
  params = init_variables(module, KEY, text_batch())['params']
  batch = {'input_ids': text_batch()['input_ids'][:1]}
  path = ('encoder', 'embeddings', 'position_embeddings', 'embedding')
  probe_V = jax.random.normal(jax.random.PRNGKey(1), (V,))

  def logits_L(table):
    p = jax.tree_util.tree_map(lambda x: x, params)
    p['encoder']['embeddings']['position_embeddings']['embedding'] = table
    return module.apply({'params': p}, batch, train=False)['logits'][0] @ probe_V

  table = params
  for k in path:
    table = table[k]
  jac_LxPxD = jax.jit(jax.jacrev(logits_L))(table)
  norms_LxL = np.abs(np.asarray(jac_LxPxD[:, :L])).sum(-1)
  future = np.triu(np.ones((L, L), bool), k=1)
  assert (norms_LxL[future] == 0).all()
  assert (norms_LxL[~future] > 0).all()


@pytest.mark.parametrize('preset,causal', [('bert_base', False), ('gpt2_small', True)])
def test_attention_probabilities_are_sown_on_request(preset, causal):
  """Rows are distributions over the keys a query may see; only a mutable apply keeps them."""
  module = Transformer(tiny(preset, position_encoding='alibi'))
  params = init_variables(module, KEY, text_batch())['params']
  batch = text_batch()
  plain = module.apply({'params': params}, batch, train=False)
  out, state = module.apply({'params': params}, batch, train=False, mutable=['intermediates'])
  np.testing.assert_array_equal(out['hidden_states'], plain['hidden_states'])
  for i in range(2):
    (probs_BxHxLxL,) = state['intermediates'][f'layer_{i}']['attention']['attention_probs']
    assert probs_BxHxLxL.shape == (B, 2, L, L)
    np.testing.assert_allclose(probs_BxHxLxL.sum(-1), 1.0, rtol=1e-5)
    visible_BxLxL = np.broadcast_to(batch['attention_mask'][:, None, :].astype(bool), (B, L, L))
    if causal:
      visible_BxLxL = visible_BxLxL & np.tril(np.ones((L, L), bool))
    hidden_BxHxLxL = np.broadcast_to(~visible_BxLxL[:, None], probs_BxHxLxL.shape)
    assert (np.asarray(probs_BxHxLxL)[hidden_BxHxLxL] == 0).all()
    assert (np.asarray(probs_BxHxLxL)[~hidden_BxHxLxL] > 0).all()


@pytest.mark.parametrize('preset,model,encoding', [('gpt2_small', GPTForCausalLM, 'learned'),
                                                   ('bert_base', BertForMaskedLM, 'learned'),
                                                   ('bert_base', BertForMaskedLM, 'alibi')])
def test_packed_documents_equal_separate(preset, model, encoding):
  module = model(tiny(preset, position_encoding=encoding))
  apply_fn, params, _ = build(module)
  rng = np.random.default_rng(3)
  doc1, doc2 = rng.integers(3, V, 3).astype(np.int32), rng.integers(3, V, 4).astype(np.int32)
  packed = {'input_ids': np.concatenate([doc1, doc2, [0]])[None],
            'attention_mask': np.array([[1] * 7 + [0]], np.int32),
            'segment_ids': np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32),
            'positions': np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32)}
  together = apply_fn({'params': params}, packed)['logits'][0]
  # Each document alone in its own row, right-padded to the same length.
  alone = {'input_ids': np.zeros((2, L), np.int32), 'attention_mask': np.zeros((2, L), np.int32)}
  for row, doc in enumerate((doc1, doc2)):
    alone['input_ids'][row, :len(doc)] = doc
    alone['attention_mask'][row, :len(doc)] = 1
  alone = apply_fn({'params': params}, alone)['logits']
  np.testing.assert_allclose(together[:3], alone[0, :3], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(together[3:7], alone[1, :4], atol=1e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(together)).all()


def test_alibi_bias_is_minus_slope_times_distance():
  np.testing.assert_allclose(alibi_slopes(4), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8])
  positions = jnp.array([[0, 1, 2, 5]])
  bias_BxHxLxT = np.asarray(alibi_bias(positions, positions, 4))
  assert bias_BxHxLxT.shape == (1, 4, 4, 4)
  distance = np.abs(np.array([0, 1, 2, 5])[:, None] - np.array([0, 1, 2, 5])[None])
  np.testing.assert_allclose(bias_BxHxLxT[0, 1], -distance / 16)


@pytest.mark.parametrize('preset,model', [('bert_base', BertForMaskedLM),
                                          ('gpt2_small', GPTForCausalLM)])
def test_alibi_has_no_position_table_and_sees_only_distances(preset, model):
  """Shifting every position changes a learned-position model, not an ALiBi one."""
  batch = text_batch()
  shifted = {**batch, 'positions': np.broadcast_to(np.arange(L) + 5, (B, L)).astype(np.int32)}
  outputs = {}
  for encoding in ('learned', 'alibi'):
    apply_fn, params, _ = build(model(tiny(preset, position_encoding=encoding)), batch)
    assert ('position_embeddings' in params['encoder']['embeddings']) == (encoding == 'learned')
    outputs[encoding] = [np.asarray(apply_fn({'params': params}, b)['logits'])
                         for b in (batch, shifted)]
  np.testing.assert_allclose(*outputs['alibi'], atol=1e-5)
  assert not np.allclose(*outputs['learned'], atol=1e-3)
  # Word order still matters: swapping two tokens moves the logits of the others
  # (larger weights than the preset's make the change visible at initialisation).
  swapped = batch['input_ids'].copy()
  swapped[:, [1, 2]] = swapped[:, [2, 1]]
  module = model(tiny(preset, position_encoding='alibi', initializer_range=0.2))
  apply_fn, params, _ = build(module, batch)
  logits = [np.asarray(apply_fn({'params': params}, {**batch, 'input_ids': ids})['logits'])
            for ids in (batch['input_ids'], swapped)]
  assert not np.allclose(logits[0][0, 4:], logits[1][0, 4:], atol=1e-3)


def test_alibi_decoder_is_causal():
  module = GPTForCausalLM(tiny('gpt2_small', position_encoding='alibi'))
  apply_fn, params, batch = build(module)
  ids = batch['input_ids'].copy()
  ids[:, 5:] = (ids[:, 5:] + 1) % V
  a = np.asarray(apply_fn({'params': params}, batch)['logits'])
  b = np.asarray(apply_fn({'params': params}, {**batch, 'input_ids': ids})['logits'])
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_unknown_position_encoding_is_a_clear_error():
  with pytest.raises(ConfigError, match="position_encoding 'rope'.*'alibi'"):
    tiny('bert_base', position_encoding='rope')


def test_tied_lm_heads_project_with_word_embeddings():
  apply_fn, params, batch = build(GPTForCausalLM(tiny('gpt2_small')))
  assert 'head' not in params
  out = apply_fn({'params': params}, batch)
  table_VxD = params['encoder']['embeddings']['word_embeddings']['embedding']
  np.testing.assert_allclose(out['logits'], out['hidden_states'] @ table_VxD.T, atol=1e-5)
  _, params, _ = build(BertForMaskedLM(tiny('bert_base')))
  assert sorted(tree_lib.flatten(params['head'])) == [
      'bias', 'dense/bias', 'dense/kernel', 'layer_norm/bias', 'layer_norm/scale']
  _, params, _ = build(GPTForCausalLM(tiny('gpt2_small', tie_word_embeddings=False)))
  assert params['head']['decoder']['kernel'].shape == (D, V)


def test_dropout_only_in_training():
  apply_fn, params, batch = build(BertForMaskedLM(tiny('bert_base')))
  run = lambda train, seed: np.asarray(apply_fn(
      {'params': params}, batch, train=train,
      rngs={'dropout': jax.random.PRNGKey(seed)})['logits'])
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  np.testing.assert_array_equal(run(True, 1), run(True, 1))
  assert not np.allclose(run(True, 1), run(True, 2))
  assert not np.allclose(run(True, 1), run(False, 1))


@pytest.mark.parametrize('preset,count', [('bert_base', 109_482_240),
                                          ('distilbert_base', 66_362_880),
                                          ('gpt2_small', 124_439_808)])
def test_backbone_parameter_counts_match_public_models(preset, count):
  batch = {'input_ids': jnp.zeros((1, 4), jnp.int32)}
  shapes = jax.eval_shape(lambda: Transformer(PRESETS[preset]).init(KEY, batch, train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count


def test_layer_ids_embeddings_layers_head():
  _, params, _ = build(SequenceClassifier(tiny('bert_base', num_layers=3), 3))
  ids, num_layers = layer_ids(params)
  assert num_layers == 3
  for path, depth in ids.items():
    if path.startswith('encoder/embeddings/'):
      assert depth == 0, path
    elif path.startswith('encoder/layer_'):
      assert depth == int(path.split('/')[1].split('_')[1]) + 1, path
    elif path.startswith('head/'):
      assert depth == num_layers + 1, path
  assert ids['head/dense/kernel'] == 4 and ids['encoder/layer_2/mlp/output/kernel'] == 3
