"""Text generation from a causal LM: greedy, temperature, top-k and nucleus sampling.

`generate` is one compiled program: the prompt fills a key/value cache in one
call, then each new token costs one call on a single position. Its reference,
`generate_uncached`, recomputes the whole sequence at every step; both draw
the same random numbers, so they give the same tokens.

Prompts in a batch have one length P. Shorter prompts are left-padded, with
`prompt_mask` 0 on the padding: padding is never attended to and positions
count real tokens only, so a row generates what it would alone. Every row
needs at least one real token; right padding is not supported.

Example:
  model = GPTForCausalLM(PRESETS['gpt2_small'])
  tokens = generate(model, params, prompt_ids, max_new_tokens=32,
                    rng=jax.random.key(0), top_p=0.9, eos_id=50256)
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError

# (state, tokens_BxT, i) -> (logits (B, V) of new token i, state); the state is the cache.
_Step = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
_STATIC_ARGS = ('model', 'max_new_tokens', 'top_k', 'greedy', 'eos_id')


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the `k` largest logits along the last axis; the others become -inf.

  Exactly `k` survive, even with ties (the lower index wins).

  Args:
    logits: (..., V).
    k: how many to keep, at least 1; `k >= V` keeps them all.

  Returns:
    The filtered logits, same shape.
  """
  if k < 1:
    raise ConfigError(f'top_k={k} keeps no token; use top_k >= 1 or None')
  if k >= logits.shape[-1]:
    return logits
  top_values, top_indices = jax.lax.top_k(logits, k)
  return jnp.put_along_axis(jnp.full_like(logits, -jnp.inf), top_indices, top_values, axis=-1,
                            inplace=False)


def filter_top_p(logits: jax.Array, p: jax.typing.ArrayLike) -> jax.Array:
  """Nucleus filtering: keeps the fewest most likely tokens whose probabilities sum to >= p.

  The most likely token always survives; the others become -inf.

  Args:
    logits: (..., V).
    p: in (0, 1]; may be traced, so changing it does not recompile.

  Returns:
    The filtered logits, same shape.
  """
  order = jnp.argsort(logits, axis=-1, descending=True)
  probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1).astype(jnp.float32), axis=-1)
  # A token stays if the more likely ones have not reached p yet.
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), order, mass_before < p, axis=-1,
                            inplace=False)
  return jnp.where(keep, logits, -jnp.inf)


def _choose(logits_BxV: jax.Array, key: jax.Array | None, *, temperature: jax.typing.ArrayLike,
            top_k: int | None, top_p: jax.typing.ArrayLike | None, greedy: bool) -> jax.Array:
  """The next token of each row, (B,) int32."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  best_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if greedy:
    return best_B
  # Temperature 0 is the limit of ever sharper sampling: greedy.
  scaled_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
  if top_k is not None:
    scaled_BxV = filter_top_k(scaled_BxV, top_k)
  if top_p is not None:
    scaled_BxV = filter_top_p(scaled_BxV, top_p)
  sampled_B = jax.random.categorical(key, scaled_BxV, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled_B, best_B)


def _with_decode(model: nn.Module, decode: bool) -> nn.Module:
  return model.clone(config=dataclasses.replace(model.config, decode=decode))


def _cached_steps(model: nn.Module, params: Any, batch_BxT: dict[str, jax.Array],
                  p: int) -> tuple[Callable[[jax.Array], tuple[jax.Array, Any]], _Step]:
  """The prompt in one call that fills the cache, then one call per new token."""
  decoder = _with_decode(model, True)
  b, t = batch_BxT['attention_mask'].shape
  shapes = jax.eval_shape(functools.partial(decoder.init, train=False), jax.random.key(0),
                          {'input_ids': jax.ShapeDtypeStruct((b, t), jnp.int32)})
  empty_cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])

  def call(cache, batch):
    out, variables = decoder.apply({'params': params, 'cache': cache}, batch, train=False,
                                   mutable=['cache'])
    return out['logits'], variables['cache']

  def first(tokens_BxT):
    prompt = {**jax.tree.map(lambda x: x[:, :p], batch_BxT), 'input_ids': tokens_BxT[:, :p]}
    logits_BxPxV, cache = call(empty_cache, prompt)
    return logits_BxPxV[:, -1], cache

  def step(cache, tokens_BxT, i):
    # New token i is predicted from new token i - 1, the last one written.
    at = lambda x: jax.lax.dynamic_slice_in_dim(x, p + i - 1, 1, axis=1)
    logits_Bx1xV, cache = call(cache, {**jax.tree.map(at, batch_BxT), 'input_ids': at(tokens_BxT)})
    return logits_Bx1xV[:, 0], cache

  return first, step


def _uncached_steps(model: nn.Module, params: Any, batch_BxT: dict[str, jax.Array],
                    p: int) -> tuple[Callable[[jax.Array], tuple[jax.Array, Any]], _Step]:
  """The whole sequence at every step; causality hides the slots not written yet."""
  model = _with_decode(model, False)

  def logits_at(tokens_BxT, index):
    out = model.apply({'params': params}, {**batch_BxT, 'input_ids': tokens_BxT}, train=False)
    return jax.lax.dynamic_index_in_dim(out['logits'], index, axis=1, keepdims=False)

  return (lambda tokens_BxT: (logits_at(tokens_BxT, p - 1), None),
          lambda state, tokens_BxT, i: (logits_at(tokens_BxT, p + i - 1), state))


def _generate(steps_fn, model: nn.Module, params: Any, prompt_ids: jax.Array, *,
              max_new_tokens: int, rng: jax.Array | None, temperature: jax.typing.ArrayLike,
              top_k: int | None, top_p: jax.typing.ArrayLike | None, greedy: bool,
              eos_id: int | None, prompt_mask: jax.Array | None) -> jax.Array:
  """The loop shared by `generate` and `generate_uncached`."""
  cfg = model.config
  b, p = prompt_ids.shape
  n = max_new_tokens
  t = p + n
  if n < 1:
    raise ConfigError(f'max_new_tokens={n}; generate at least one token')
  if t + cfg.position_offset > cfg.max_position_embeddings:
    raise ConfigError(f'a prompt of {p} tokens and max_new_tokens={n} need positions up to '
                      f'{t + cfg.position_offset - 1}, beyond max_position_embeddings='
                      f'{cfg.max_position_embeddings}; shorten the prompt or generate fewer '
                      f'tokens')
  if rng is None and not greedy:
    raise ConfigError('sampling needs rng=jax.random.key(...); or pass greedy=True')
  if prompt_mask is None:
    prompt_mask = jnp.ones((b, p), jnp.int32)
  mask_BxT = jnp.concatenate([jnp.asarray(prompt_mask, jnp.int32), jnp.ones((b, n), jnp.int32)], 1)
  batch_BxT = {'attention_mask': mask_BxT,
               'positions': jnp.maximum(jnp.cumsum(mask_BxT, axis=1) - 1, 0) + cfg.position_offset}
  fill = 0 if eos_id is None else eos_id
  tokens_BxT = jnp.concatenate([jnp.asarray(prompt_ids, jnp.int32),
                                jnp.full((b, n), fill, jnp.int32)], axis=1)
  choose = functools.partial(_choose, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=greedy)

  def emit(i, tokens_BxT, done_B, logits_BxV):
    # One key per new token, however the loop is run, so both paths sample alike.
    token_B = choose(logits_BxV, None if rng is None else jax.random.fold_in(rng, i))
    if eos_id is not None:
      token_B = jnp.where(done_B, eos_id, token_B)
      done_B |= token_B == eos_id
    return jax.lax.dynamic_update_slice(tokens_BxT, token_B[:, None], (0, p + i)), done_B

  first, step = steps_fn(model, params, batch_BxT, p)
  logits_BxV, state = first(tokens_BxT)
  tokens_BxT, done_B = emit(0, tokens_BxT, jnp.zeros((b,), bool), logits_BxV)

  def cond(carry):
    i, _, done_B, _ = carry
    return (i < n) & ~done_B.all()

  def body(carry):
    i, tokens_BxT, done_B, state = carry
    logits_BxV, state = step(state, tokens_BxT, i)
    tokens_BxT, done_B = emit(i, tokens_BxT, done_B, logits_BxV)
    return i + 1, tokens_BxT, done_B, state

  # Slots after an early stop already hold eos.
  _, tokens_BxT, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), tokens_BxT, done_B, state))
  return tokens_BxT


@functools.partial(jax.jit, static_argnames=_STATIC_ARGS)
def generate(model: nn.Module, params: Any, prompt_ids: jax.Array, *, max_new_tokens: int,
             rng: jax.Array | None = None, temperature: jax.typing.ArrayLike = 1.0,
             top_k: int | None = None, top_p: jax.typing.ArrayLike | None = None,
             greedy: bool = False, eos_id: int | None = None,
             prompt_mask: jax.Array | None = None) -> jax.Array:
  """Continues each prompt by `max_new_tokens` tokens, with a key/value cache.

  Jitted as one program per model, shapes and static options (`top_k`,
  `greedy`, `eos_id`); `temperature` and `top_p` are traced, so changing their
  values does not recompile.

  Args:
    model: a causal LM whose `config` is a `TransformerConfig`, such as
      `GPTForCausalLM`; its `decode` flag is set here.
    params: the model's parameters.
    prompt_ids: (B, P) integer token ids, left-padded if their lengths differ.
    max_new_tokens: N, the number of tokens to add; P + N must fit
      `max_position_embeddings`.
    rng: a PRNG key; required unless `greedy`.
    temperature: divides the logits; 0 is greedy.
    top_k: sample among the k most likely tokens only.
    top_p: sample among the fewest most likely tokens whose probability
      reaches p (nucleus sampling); applied after `top_k`.
    greedy: take the most likely token; no randomness.
    eos_id: a row that has emitted this id emits it ever after; the loop stops
      early once every row has.
    prompt_mask: (B, P), 1 for real tokens and 0 for left padding; default all 1.

  Returns:
    (B, P + N) int32: the prompts followed by the new tokens.
  """
  return _generate(_cached_steps, model, params, prompt_ids, max_new_tokens=max_new_tokens,
                   rng=rng, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   eos_id=eos_id, prompt_mask=prompt_mask)


@functools.partial(jax.jit, static_argnames=_STATIC_ARGS)
def generate_uncached(model: nn.Module, params: Any, prompt_ids: jax.Array, *,
                      max_new_tokens: int, rng: jax.Array | None = None,
                      temperature: jax.typing.ArrayLike = 1.0, top_k: int | None = None,
                      top_p: jax.typing.ArrayLike | None = None, greedy: bool = False,
                      eos_id: int | None = None,
                      prompt_mask: jax.Array | None = None) -> jax.Array:
  """`generate` without a cache: every step reruns the model on the whole (B, P + N) buffer.

  Quadratically slower; the reference that `generate` is checked against.
  Arguments and result as `generate`.
  """
  return _generate(_uncached_steps, model, params, prompt_ids, max_new_tokens=max_new_tokens,
                   rng=rng, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   eos_id=eos_id, prompt_mask=prompt_mask)
