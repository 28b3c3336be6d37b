"""The vocabulary projection fused with its cross-entropy, a chunk of positions at a time.

A language model's logits are its largest tensor: GPT-mini's 16 × 256 positions
over 8,192 tokens are 128 MB, and their gradient as much again. `projected_nll`
never holds more than one chunk of them. Under differentiation its forward
pass computes, chunk by chunk, the logits, the loss and the loss's gradients
with respect to the hidden states, the embedding table and the bias, and keeps
only those; the backward pass scales them by the incoming cotangent. The
matmuls are the three of the unfused projection, none recomputed.
"""

import functools

import jax
import jax.numpy as jnp

from jaxpretrain.models.layers import sum_rows, table_gradient
from jaxpretrain.objectives.common import top1_hits

# Logit elements per chunk (float32): 32 MB.
CHUNK_ELEMENTS = 2 ** 23


def chunk_length(batch: int, length: int, vocab_size: int,
                 budget: int = CHUNK_ELEMENTS) -> int:
  """Positions per chunk so that a (batch, chunk, vocab) block of logits fits `budget`."""
  return max(1, min(length, budget // max(1, batch * vocab_size)))


def projected_nll(x_BxNxD: jax.Array, table_VxD: jax.Array, bias_V: jax.Array | None,
                  targets_BxN: jax.Array, weights_BxN: jax.Array, *,
                  chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
  """The weighted sum of `-log softmax(x @ table.T + bias)[target]`, and top-1 hits.

  Args:
    x_BxNxD: hidden states at the predicted positions.
    table_VxD: the output embedding (the tied word embeddings).
    bias_V: a bias on the logits, or None.
    targets_BxN: the token each position predicts.
    weights_BxN: each position's weight in the sum (0 for positions not predicted).
    chunk: positions per chunk along N (default `chunk_length`).

  Returns:
    `(nll_sum, hits_BxN)`: `sum(weights * nll)` (differentiable in `x`, `table`
    and `bias`), and 1.0 where the target's logit is the largest, else 0.0.
  """
  b, n, _ = x_BxNxD.shape
  chunk = chunk or chunk_length(b, n, table_VxD.shape[0])
  return _projected_nll(chunk, x_BxNxD, table_VxD, bias_V, targets_BxN.astype(jnp.int32),
                        weights_BxN.astype(jnp.float32))


def _chunks(a_BxN: jax.Array, chunk: int) -> jax.Array:
  """(B, N, ...) → (C, B, chunk, ...), zero-padded along N; the batch axis stays second."""
  b, n = a_BxN.shape[:2]
  count = -(-n // chunk)
  pad = [(0, 0), (0, count * chunk - n)] + [(0, 0)] * (a_BxN.ndim - 2)
  a = jnp.pad(a_BxN, pad).reshape(b, count, chunk, *a_BxN.shape[2:])
  return jnp.moveaxis(a, 1, 0)


def _unchunk(a_CxBxK: jax.Array, n: int) -> jax.Array:
  """The inverse of `_chunks`: (C, B, chunk, ...) → (B, N, ...)."""
  c, b, k = a_CxBxK.shape[:3]
  return jnp.moveaxis(a_CxBxK, 0, 1).reshape(b, c * k, *a_CxBxK.shape[3:])[:, :n]


def _logits(x_BxKxD, table_VxD, bias_V):
  logits_BxKxV = jnp.einsum('bkd,vd->bkv', x_BxKxD, table_VxD).astype(jnp.float32)
  return logits_BxKxV if bias_V is None else logits_BxKxV + bias_V.astype(jnp.float32)


def _chunk_loss(x_BxKxD, table_VxD, bias_V, t_BxK, w_BxK):
  """One chunk's weighted NLL sum, hits, and log-normaliser and logits for the gradient."""
  logits_BxKxV = _logits(x_BxKxD, table_VxD, bias_V)
  lse_BxK = jax.nn.logsumexp(logits_BxKxV, axis=-1)
  target_BxK = jnp.take_along_axis(logits_BxKxV, t_BxK[..., None], axis=-1)[..., 0]
  nll = jnp.sum(w_BxK * (lse_BxK - target_BxK))
  return nll, top1_hits(logits=logits_BxKxV, labels=t_BxK), lse_BxK, logits_BxKxV


def _scan(chunk, x_BxNxD, table_VxD, bias_V, targets_BxN, weights_BxN, *, grads: bool):
  """Runs the chunks in a loop; with `grads`, also accumulates the gradients of the sum."""
  n = x_BxNxD.shape[1]
  xs = (_chunks(x_BxNxD, chunk), _chunks(targets_BxN, chunk), _chunks(weights_BxN, chunk))
  zero_table = jnp.zeros(table_VxD.shape, jnp.float32)
  zero_bias = None if bias_V is None else jnp.zeros(bias_V.shape, jnp.float32)

  def body(carry, chunk_xs):
    nll_sum, g_table, g_bias = carry
    x_BxKxD, t_BxK, w_BxK = chunk_xs
    nll, hits_BxK, lse_BxK, logits_BxKxV = _chunk_loss(x_BxKxD, table_VxD, bias_V, t_BxK, w_BxK)
    if not grads:
      return (nll_sum + nll, g_table, g_bias), (hits_BxK, None)
    # d(sum w * nll) / d logits = w * (softmax - one_hot(target)).
    probs_BxKxV = jnp.exp(logits_BxKxV - lse_BxK[..., None])
    v = table_VxD.shape[0]
    g_BxKxV = (probs_BxKxV - jax.nn.one_hot(t_BxK, v, dtype=jnp.float32)) * w_BxK[..., None]
    g_BxKxV = g_BxKxV.astype(x_BxKxD.dtype)
    g_x = jnp.einsum('bkv,vd->bkd', g_BxKxV, table_VxD)
    g_table += table_gradient(x_BxKxD, g_BxKxV)
    if g_bias is not None:
      g_bias += sum_rows(g_BxKxV)
    return (nll_sum + nll, g_table, g_bias), (hits_BxK, g_x)

  init = (jnp.zeros((), jnp.float32), zero_table, zero_bias)
  (nll_sum, g_table, g_bias), (hits, g_x) = jax.lax.scan(body, init, xs)
  g_x = None if g_x is None else _unchunk(g_x, n)
  return nll_sum, _unchunk(hits, n), (g_x, g_table, g_bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _projected_nll(chunk, x_BxNxD, table_VxD, bias_V, targets_BxN, weights_BxN):
  nll_sum, hits_BxN, _ = _scan(chunk, x_BxNxD, table_VxD, bias_V, targets_BxN, weights_BxN,
                               grads=False)
  return nll_sum, hits_BxN


def _forward(chunk, x_BxNxD, table_VxD, bias_V, targets_BxN, weights_BxN):
  nll_sum, hits_BxN, (g_x, g_table, g_bias) = _scan(chunk, x_BxNxD, table_VxD, bias_V,
                                                     targets_BxN, weights_BxN, grads=True)
  g_bias = None if g_bias is None else g_bias.astype(bias_V.dtype)
  return (nll_sum, hits_BxN), (g_x, g_table.astype(table_VxD.dtype), g_bias)


def _backward(chunk, grads, cotangents):
  del chunk
  g_x, g_table, g_bias = grads
  g = cotangents[0]  # The hits are piecewise constant: they pass no gradient.
  scale = lambda a: None if a is None else (g * a).astype(a.dtype)
  return scale(g_x), scale(g_table), scale(g_bias), None, None


_projected_nll.defvjp(_forward, _backward)
