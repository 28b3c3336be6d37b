"""The vocabulary projection fused with its cross-entropy equals the unfused loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import finetune, objectives
from jaxpretrain.models import PRESETS, BertForMaskedLM, GPTForCausalLM
from jaxpretrain.models.vocab_loss import chunk_length, projected_nll
from tests.helpers import assert_trees_close, run_mesh, run_pmap, run_single, to_numpy

B, N, D, V = 3, 7, 16, 50


def _inputs():
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  x = jax.random.normal(k[0], (B, N, D))
  table = 0.3 * jax.random.normal(k[1], (V, D))
  bias = jax.random.normal(k[2], (V,))
  targets = jax.random.randint(k[3], (B, N), 0, V)
  weights = (jax.random.uniform(k[4], (B, N)) > 0.3).astype(jnp.float32)
  return x, table, bias, targets, weights


def _reference(x, table, bias, targets, weights):
  logits = x @ table.T + (0.0 if bias is None else bias)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(weights * nll), (jnp.argmax(logits, -1) == targets).astype(jnp.float32)


@pytest.mark.parametrize('chunk', [1, 3, N, None])  # 3 leaves a padded last chunk
@pytest.mark.parametrize('with_bias', [True, False])
def test_projected_nll_equals_the_loss_of_the_logits_in_value_and_gradient(chunk, with_bias):
  x, table, bias, targets, weights = _inputs()
  bias = bias if with_bias else None
  fused = lambda *a: projected_nll(*a, targets, weights, chunk=chunk)
  reference = lambda *a: _reference(*a, targets, weights)
  (nll, hits), (nll0, hits0) = jax.jit(fused)(x, table, bias), reference(x, table, bias)
  np.testing.assert_allclose(nll, nll0, rtol=1e-5)
  np.testing.assert_array_equal(hits, hits0)
  args = (0, 1, 2) if with_bias else (0, 1)
  # A cotangent other than 1 checks that the backward pass scales the saved gradients.
  grads = jax.jit(jax.grad(lambda *a: 2.5 * fused(*a)[0], argnums=args))(x, table, bias)
  grads0 = jax.grad(lambda *a: 2.5 * reference(*a)[0], argnums=args)(x, table, bias)
  for g, g0 in zip(grads, grads0):
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-5)


def test_chunks_fit_the_budget_and_never_exceed_the_length():
  assert chunk_length(16, 256, 8192, budget=2 ** 23) == 64
  assert chunk_length(32, 20, 30522, budget=2 ** 23) == 8
  assert chunk_length(4, 5, 100, budget=2 ** 23) == 5
  assert chunk_length(64, 128, 2 ** 20, budget=2 ** 10) == 1


TINY = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=32, dropout=0.0, attention_dropout=0.0)


def _without_targets(model):
  """`model.apply` on the batch without its targets: the model returns logits."""

  def apply_fn(variables, inputs, **kw):
    inputs = {k: v for k, v in inputs.items() if k not in ('targets', 'target_weights')}
    return model.apply(variables, inputs, **kw)

  return apply_fn


@pytest.mark.parametrize('family', ['bert', 'gpt'])
def test_language_models_give_the_same_loss_and_gradient_fused_or_from_logits(family):
  rng = np.random.default_rng(0)
  batch = {'input_ids': rng.integers(4, 61, (4, 16)).astype(np.int32),
           'attention_mask': np.ones((4, 16), np.int32)}
  batch['attention_mask'][1, 11:] = 0
  if family == 'bert':
    model = BertForMaskedLM(dataclasses.replace(PRESETS['bert_tiny'], **TINY, pad_token_id=0))
    objective = objectives.masked_lm(mask_id=3, vocab_size=61, special_ids=(0, 1, 2, 3))
  else:
    model = GPTForCausalLM(dataclasses.replace(PRESETS['gpt2_tiny'], **TINY))
    objective = objectives.causal_lm()
  state = finetune.create_state(model, finetune.identity(), tx=optax.sgd(0.1),
                                rng=jax.random.PRNGKey(0), example_batch=batch)
  key = jax.random.PRNGKey(1)
  run = lambda fn: jax.jit(jax.value_and_grad(
      lambda p: objective(fn, p, batch, key, train=False), has_aux=True))(state.all_params())
  (loss, metrics), grads = run(state.apply_fn)
  (loss0, metrics0), grads0 = run(_without_targets(model))
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'], metrics0['accuracy'])
  for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6)


def test_fused_causal_lm_trains_alike_on_one_device_a_mesh_and_pmap():
  rng = np.random.default_rng(1)
  batches = [{'input_ids': rng.integers(4, 61, (8, 16)).astype(np.int32),
              'attention_mask': np.ones((8, 16), np.int32)} for _ in range(3)]
  model = GPTForCausalLM(dataclasses.replace(PRESETS['gpt2_tiny'], **TINY))
  init = to_numpy(finetune.create_state(model, finetune.identity(), tx=optax.adamw(1e-2),
                                        rng=jax.random.PRNGKey(0), example_batch=batches[0]))
  results = [run(init, batches, objectives.causal_lm()) for run in (run_single, run_mesh, run_pmap)]
  (ref_state, ref_metrics), *others = results
  for state, metrics in others:
    # Adam divides by the gradient's own scale, so a gradient near zero summed in another
    # order across devices moves its parameter by a different ~1e-5 (seen: 2.8e-5 apart).
    assert_trees_close(ref_state.params, state.params, atol=1e-4)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-5)
