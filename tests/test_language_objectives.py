"""Masked LM, causal LM and distillation objectives on tiny Transformers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import finetune, objectives
from jaxpretrain.models import PRESETS, BertForMaskedLM, GPTForCausalLM
from jaxpretrain.step import make_train_step

VOCAB, PAD, CLS, SEP, MASK = 101, 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP, MASK)
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
BERT = dataclasses.replace(PRESETS['bert_tiny'], **TINY, pad_token_id=PAD)
GPT = dataclasses.replace(PRESETS['gpt2_tiny'], **TINY)


def _mlm_batch(b=4, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(4, VOCAB, (b, length)).astype(np.int32)
  ids[:, 0], mask = CLS, np.ones((b, length), np.int32)
  for i in range(b):  # rows of different lengths, padded at the end
    n = length - 3 * (i % 4)
    ids[i, n - 1], ids[i, n:], mask[i, n:] = SEP, PAD, 0
  return {'input_ids': ids, 'attention_mask': mask}


def _task(**kw):
  return objectives.mlm_task(mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, **kw)


def test_mlm_masks_a_fresh_fraction_of_real_tokens_and_never_special_ones():
  batch = _mlm_batch()
  inputs, targets, weights = _task().prepare(batch, jax.random.PRNGKey(0))
  positions = np.asarray(inputs['masked_positions'])
  eligible = (batch['attention_mask'] == 1) & ~np.isin(batch['input_ids'], SPECIAL)
  np.testing.assert_array_equal(weights.sum(1), np.round(0.15 * eligible.sum(1)))
  for row in range(4):
    picked = positions[row][np.asarray(weights[row]) > 0]
    assert len(set(picked)) == len(picked) and eligible[row, picked].all()
    np.testing.assert_array_equal(targets[row][np.asarray(weights[row]) > 0],
                                  batch['input_ids'][row, picked])
    unpicked = np.setdiff1d(np.arange(24), picked)
    np.testing.assert_array_equal(inputs['input_ids'][row, unpicked],
                                  batch['input_ids'][row, unpicked])
  other, _, _ = _task().prepare(batch, jax.random.PRNGKey(1))
  assert not np.array_equal(other['masked_positions'], inputs['masked_positions'])


def test_mlm_replaces_80_percent_by_mask_10_by_random_10_kept():
  batch = _mlm_batch(b=256, length=128)
  inputs, targets, weights = _task().prepare(batch, jax.random.PRNGKey(3))
  picked = np.asarray(weights) > 0
  new = np.take_along_axis(np.asarray(inputs['input_ids']), np.asarray(inputs['masked_positions']),
                           axis=1)[picked]
  old = np.asarray(targets)[picked]
  masked, kept = np.mean(new == MASK), np.mean(new == old)
  assert picked.sum() > 3000
  assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02  # random draws rarely hit old
  assert not np.isin(new[(new != MASK) & (new != old)], SPECIAL).any()


def _state(model, transform=None, batch=None, lr=1e-3):
  return finetune.create_state(model, transform or finetune.identity(), tx=optax.adam(lr),
                               rng=jax.random.PRNGKey(0), example_batch=batch or _mlm_batch())


def test_masked_lm_trains_and_predicts_only_at_masked_positions():
  objective = objectives.masked_lm(mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)
  state = _state(BertForMaskedLM(BERT), lr=1e-2)
  captured = {}

  def spy(variables, inputs, **kw):
    out = state.apply_fn(variables, inputs, **kw)
    captured['targets'] = inputs['targets'].shape
    captured['hits'] = out['hits'].shape  # The head's loss, fused with the projection.
    return out

  loss, metrics = objective(spy, state.all_params(), _mlm_batch(), jax.random.PRNGKey(0),
                            train=False)
  # M = ceil(0.15 * 24) + 1 slots, not 24.
  assert captured['targets'] == captured['hits'] == (4, 5)
  assert np.isfinite(loss) and abs(float(loss) - np.log(VOCAB)) < 1.0
  step = jax.jit(make_train_step(objective))
  for _ in range(40):  # one batch, masked afresh each step: the model learns its tokens
    state, metrics = step(state, _mlm_batch())
  assert float(metrics['loss']) < float(loss) - 1.0


def _gpt_batch(docs, length):
  """Documents packed into one row, with segment ids and per-document positions."""
  ids, seg, pos = np.zeros(length, np.int32), np.zeros(length, np.int32), np.zeros(length, np.int32)
  at = 0
  for s, doc in enumerate(docs, start=1):
    ids[at:at + len(doc)], seg[at:at + len(doc)], pos[at:at + len(doc)] = doc, s, np.arange(len(doc))
    at += len(doc)
  mask = (seg > 0).astype(np.int32)
  return {'input_ids': ids[None], 'segment_ids': seg[None], 'positions': pos[None],
          'attention_mask': mask[None]}


def test_causal_lm_on_packed_documents_equals_each_document_alone():
  rng = np.random.default_rng(0)
  docs = [rng.integers(4, VOCAB, n).astype(np.int32) for n in (7, 9)]
  state = _state(GPTForCausalLM(GPT), batch=_gpt_batch(docs, 20))
  objective = objectives.causal_lm()
  key = jax.random.PRNGKey(0)
  packed, packed_metrics = objective(state.apply_fn, state.all_params(), _gpt_batch(docs, 20),
                                     key, train=False)
  alone = [objective(state.apply_fn, state.all_params(), _gpt_batch([d], 20), key, train=False)
           for d in docs]
  assert float(packed_metrics['tokens']) == 6 + 8  # no prediction across the boundary
  expected = sum(float(l) * float(m['tokens']) for l, m in alone) / 14
  np.testing.assert_allclose(packed, expected, rtol=1e-5)


def test_causal_lm_loss_at_a_position_ignores_future_tokens():
  rng = np.random.default_rng(1)
  batch = _gpt_batch([rng.integers(4, VOCAB, 12).astype(np.int32)], 12)
  state = _state(GPTForCausalLM(GPT), batch=batch)
  objective = objectives.causal_lm()

  def early_loss(b):
    # The loss over predictions made at positions 0..5 only.
    b = dict(b, attention_mask=np.where(np.arange(12) < 7, 1, 0)[None].astype(np.int32))
    return objective(state.apply_fn, state.all_params(), b, jax.random.PRNGKey(0),
                     train=False)[0]

  changed = dict(batch, input_ids=batch['input_ids'].copy())
  changed['input_ids'][0, 9] = 4 if changed['input_ids'][0, 9] != 4 else 5
  assert float(early_loss(batch)) == float(early_loss(changed))
  full = lambda b: objective(state.apply_fn, state.all_params(), b, jax.random.PRNGKey(0),
                             train=False)[0]
  assert float(full(batch)) != float(full(changed))


def test_distillation_from_itself_has_zero_soft_loss_and_keeps_the_teacher_frozen():
  student = _state(BertForMaskedLM(BERT))
  teacher_params = jax.tree.map(np.asarray, student.all_params())
  state = _state(BertForMaskedLM(BERT), finetune.with_teacher(teacher_params))
  assert 'teacher' in state.frozen and 'teacher' not in state.params
  task = _task()
  objective = objectives.distillation(task, student.apply_fn, temperature=2.0, alpha=0.5)
  loss, metrics = objective(state.apply_fn, state.all_params(), _mlm_batch(),
                            jax.random.PRNGKey(0), train=False)
  np.testing.assert_allclose(metrics['soft_loss'], 0.0, atol=1e-5)
  hard, _ = objectives.token_objective(task)(student.apply_fn, student.all_params(),
                                              _mlm_batch(), jax.random.PRNGKey(0), train=False)
  np.testing.assert_allclose(metrics['hard_loss'], hard, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.5 * hard, rtol=1e-5)
  new, metrics = jax.jit(make_train_step(objective))(state, _mlm_batch())
  jax.tree.map(np.testing.assert_array_equal, new.frozen, state.frozen)
  # Without dropout the training step's student is its teacher too: a KL of zero, up to
  # float32 rounding (which can leave it a little below).
  np.testing.assert_allclose(metrics['soft_loss'], 0.0, atol=1e-5)


def test_distillation_without_a_teacher_is_a_clear_error():
  state = _state(BertForMaskedLM(BERT))
  objective = objectives.distillation(_task(), state.apply_fn)
  with pytest.raises(ValueError, match='with_teacher'):
    objective(state.apply_fn, state.all_params(), _mlm_batch(), jax.random.PRNGKey(0))


def test_soft_cross_entropy_is_scaled_kl():
  s, t = jnp.array([[1.0, 2.0, 0.5]]), jnp.array([[0.3, 1.0, 2.0]])
  p, q = jax.nn.softmax(t / 2.0), jax.nn.softmax(s / 2.0)
  np.testing.assert_allclose(objectives.soft_cross_entropy(s, t, 2.0),
                             4.0 * np.sum(p * np.log(p / q), -1), rtol=1e-5)
