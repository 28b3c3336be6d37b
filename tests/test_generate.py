"""Generation: the cache reproduces the full forward pass; filters; eos; one compilation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain.errors import ConfigError
from jaxpretrain.generate import filter_top_k, filter_top_p, generate, generate_uncached
from jaxpretrain.models import PRESETS, GPTForCausalLM

V, B, P, N = 101, 2, 5, 10
# A larger initialiser than GPT-2's makes the next-token distributions peaked, as in a
# trained model, so that sampling and greedy choices are not near-ties.
CFG = dataclasses.replace(PRESETS['gpt2_tiny'], vocab_size=V, hidden_size=32, num_layers=2,
                          num_heads=2, intermediate_size=64, max_position_embeddings=64,
                          pad_token_id=0, initializer_range=0.2)
MODEL = GPTForCausalLM(CFG)
PARAMS = jax.jit(MODEL.init)(jax.random.key(0),
                             {'input_ids': jnp.zeros((1, 4), jnp.int32)})['params']
PROMPT = np.random.default_rng(0).integers(1, V, (B, P)).astype(np.int32)
_apply = jax.jit(MODEL.apply)


def full_logits(tokens, **batch):
  return np.asarray(_apply({'params': PARAMS}, {'input_ids': tokens, **batch})['logits'])


def assert_greedy_continuation(prompt, tokens):
  """Each new token is the argmax of the full forward pass on everything before it."""
  logits = full_logits(tokens[None])[0]
  p = len(prompt)
  np.testing.assert_array_equal(tokens[:p], prompt)
  np.testing.assert_array_equal(tokens[p:], logits[p - 1:-1].argmax(-1))


@pytest.mark.parametrize('encoding', ['learned', 'alibi'])
def test_cached_logits_equal_full_forward_in_any_chunks(encoding):
  t = 12
  tokens = np.random.default_rng(1).integers(1, V, (B, t)).astype(np.int32)
  mask = np.ones((B, t), np.int32)
  mask[1, :2] = 0  # left padding, which must stay masked in every later step
  cfg = dataclasses.replace(CFG, position_encoding=encoding)
  params = PARAMS if encoding == 'learned' else jax.jit(GPTForCausalLM(cfg).init)(
      jax.random.key(0), {'input_ids': jnp.zeros((1, 4), jnp.int32)})['params']
  decoder = GPTForCausalLM(dataclasses.replace(cfg, decode=True))
  shapes = jax.eval_shape(decoder.init, jax.random.key(0), {'input_ids': tokens})
  assert jax.tree.structure(shapes['params']) == jax.tree.structure(params)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])  # empty
  full = np.asarray(GPTForCausalLM(cfg).apply(
      {'params': params}, {'input_ids': tokens, 'attention_mask': mask})['logits'])
  apply = jax.jit(functools.partial(decoder.apply, mutable=['cache']))
  cached = []
  for start, stop in [(0, 5), (5, 6), (6, 8), (8, 9), (9, 10), (10, 12)]:  # a prompt, then steps
    chunk = {'input_ids': tokens[:, start:stop], 'attention_mask': mask[:, start:stop]}
    out, variables = apply({'params': params, 'cache': cache}, chunk)
    cache = variables['cache']
    cached.append(np.asarray(out['logits']))
  cached = np.concatenate(cached, axis=1)
  real = mask.astype(bool)
  np.testing.assert_allclose(cached[real], full[real], atol=1e-5, rtol=1e-5)
  assert int(cache['encoder']['layer_1']['attention']['cache_index']) == t
  assert 'cache' not in jax.eval_shape(MODEL.init, jax.random.key(0), {'input_ids': tokens})


def test_greedy_cached_equals_recomputation_and_argmax():
  cached = np.asarray(generate(MODEL, PARAMS, PROMPT, max_new_tokens=N, greedy=True))
  uncached = np.asarray(generate_uncached(MODEL, PARAMS, PROMPT, max_new_tokens=N, greedy=True))
  assert cached.shape == (B, P + N) and cached.dtype == np.int32
  np.testing.assert_array_equal(cached, uncached)
  for row in range(B):
    assert_greedy_continuation(PROMPT[row], cached[row])


def test_sampling_cached_equals_recomputation():
  kwargs = dict(max_new_tokens=N, temperature=0.8, top_k=20, top_p=0.9)
  for seed in (1, 2):
    rng = jax.random.key(seed)
    cached = np.asarray(generate(MODEL, PARAMS, PROMPT, rng=rng, **kwargs))
    np.testing.assert_array_equal(
        cached, generate_uncached(MODEL, PARAMS, PROMPT, rng=rng, **kwargs))
  np.testing.assert_array_equal(cached[:, :P], PROMPT)
  other = generate(MODEL, PARAMS, PROMPT, rng=jax.random.key(3), **kwargs)
  assert not np.array_equal(cached, other)


def test_temperature_to_zero_is_greedy_and_compiles_once():
  greedy = np.asarray(generate(MODEL, PARAMS, PROMPT, max_new_tokens=N, greedy=True))
  sample = lambda prompt, seed, temperature: np.asarray(generate(
      MODEL, PARAMS, prompt, max_new_tokens=N, rng=jax.random.key(seed), temperature=temperature))
  hot = sample(PROMPT, 1, 1.0)
  compiled = generate._cache_size()
  np.testing.assert_array_equal(sample(PROMPT, 2, 0.0), greedy)
  np.testing.assert_array_equal(sample(PROMPT, 3, 1e-6), greedy)
  assert not np.array_equal(hot, greedy)
  sample(PROMPT[::-1].copy(), 4, 0.5)
  assert generate._cache_size() == compiled


def test_finished_rows_keep_emitting_eos():
  reference = np.asarray(generate(MODEL, PARAMS, PROMPT, max_new_tokens=N, greedy=True))
  eos = int(reference[0, P + 2])
  out = np.asarray(generate(MODEL, PARAMS, PROMPT, max_new_tokens=N, greedy=True, eos_id=eos))
  for row in range(B):
    hits = np.flatnonzero(reference[row, P:] == eos)
    end = P + hits[0] + 1 if len(hits) else P + N
    np.testing.assert_array_equal(out[row, :end], reference[row, :end])
    assert (out[row, end:] == eos).all()
  assert (out[0, P + 2:] == eos).all()


def test_left_padded_prompts_continue_as_if_alone():
  lengths = (P, 3)
  mask = np.zeros((B, P), np.int32)
  prompt = np.zeros((B, P), np.int32)
  for row, n in enumerate(lengths):
    mask[row, P - n:] = 1
    prompt[row, P - n:] = PROMPT[row, :n]
  out = np.asarray(generate(MODEL, PARAMS, prompt, max_new_tokens=N, greedy=True,
                            prompt_mask=mask))
  for row, n in enumerate(lengths):
    assert_greedy_continuation(PROMPT[row, :n], out[row, P - n:])


def test_filter_top_k_keeps_exactly_k():
  logits = jax.random.normal(jax.random.key(0), (3, V))
  for k in (1, 7, V, V + 5):
    out = np.asarray(filter_top_k(logits, k))
    kept = np.isfinite(out)
    assert (kept.sum(-1) == min(k, V)).all()
    assert (out[~kept] == -np.inf).all()
    np.testing.assert_array_equal(out[kept], np.asarray(logits)[kept])
    if k < V:
      dropped = np.where(kept, -np.inf, logits)
      assert (np.where(kept, out, np.inf).min(-1) >= dropped.max(-1)).all()
  ties = np.asarray(filter_top_k(jnp.array([0.0, 1.0, 1.0, 1.0]), 2))
  np.testing.assert_array_equal(ties, [-np.inf, 1.0, 1.0, -np.inf])
  with pytest.raises(ConfigError, match='top_k'):
    filter_top_k(logits, 0)


def test_filter_top_p_keeps_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([0.05, 0.5, 0.15, 0.3]))
  for p, expected in [(1e-9, [1]), (0.4, [1]), (0.7, [1, 3]), (0.9, [1, 2, 3]),
                      (1.0, [0, 1, 2, 3])]:
    assert np.flatnonzero(np.isfinite(filter_top_p(logits, p))).tolist() == expected, p
  logits = np.asarray(jax.random.normal(jax.random.key(1), (4, 50)) * 2)
  jitted = jax.jit(filter_top_p)
  for p in (0.1, 0.5, 0.9):
    kept = np.isfinite(np.asarray(jitted(logits, p)))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(len(logits)):
      order = np.argsort(-probs[row])
      size = np.searchsorted(np.cumsum(probs[row, order]), p) + 1
      assert sorted(np.flatnonzero(kept[row])) == sorted(order[:size])


def test_too_long_and_bad_arguments_are_clear_errors():
  for fn in (generate, generate_uncached):
    with pytest.raises(ConfigError, match='max_position_embeddings=64'):
      fn(MODEL, PARAMS, PROMPT, max_new_tokens=64 - P + 1, greedy=True)
    with pytest.raises(ConfigError, match='rng'):
      fn(MODEL, PARAMS, PROMPT, max_new_tokens=N)
  decoder = GPTForCausalLM(dataclasses.replace(CFG, decode=True))
  with pytest.raises(ConfigError, match='max_position_embeddings=64'):
    decoder.init(jax.random.key(0), {'input_ids': jnp.zeros((1, 65), jnp.int32)})
  with pytest.raises(ConfigError, match='causal'):
    dataclasses.replace(PRESETS['bert_tiny'], decode=True)
