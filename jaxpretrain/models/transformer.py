"""Transformer encoders and decoders (BERT, RoBERTa, DistilBERT, GPT-2) from one block.

`TransformerConfig` decides the family: post-LayerNorm bidirectional encoders
(BERT and its relatives) or pre-LayerNorm causal decoders (GPT-2). Parameter
names follow Hugging Face's closely enough that importing public weights is a
rename:

  embeddings/{word,position,token_type}_embeddings/embedding
  embeddings/layer_norm/{scale,bias}              (post-norm models only)
  layer_{i}/attention/{query,key,value,output}/{kernel,bias}
  layer_{i}/attention_norm, layer_{i}/mlp/{input,output}, layer_{i}/mlp_norm
  final_norm                                      (pre-norm models only)
  pooler/dense                                    (when `pooler`)

GPT-2's fused `c_attn` kernel splits into `query`, `key` and `value` along its
output axis. Layer indices in the names give `finetune.layer_ids` the depths.
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError
from jaxpretrain.models.layers import layer_set
from jaxpretrain.models.memory import check_remat, rematerialised
from jaxpretrain.models.vocab_loss import projected_nll

_ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),  # BERT: exact, with erf
    'gelu_new': lambda x: nn.gelu(x, approximate=True),  # GPT-2: tanh approximation
    'relu': nn.relu,
}
_POOLINGS = ('first', 'last', 'mean')
_POSITION_ENCODINGS = ('learned', 'alibi')
_POOLER_ACTIVATIONS = {'tanh': jnp.tanh, 'relu': nn.relu}  # BERT; DistilBERT's classifier


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and behaviour of a Transformer; `PRESETS` holds the public models.

  Attributes:
    vocab_size: number of token ids.
    hidden_size: width D of the residual stream.
    num_layers: number of blocks.
    num_heads: attention heads; must divide `hidden_size`.
    intermediate_size: width of the MLP's hidden layer.
    max_position_embeddings: rows of the learned position table.
    position_encoding: how the model knows word order. 'learned': a table of
      `max_position_embeddings` rows added to the word embeddings (BERT,
      GPT-2). 'alibi': no table; every head subtracts `slope * |i - j|` from
      its attention scores (`alibi_bias`), so attention starts out local and
      depends only on distance, which a masked LM otherwise learns slowly.
    type_vocab_size: rows of the token-type table; 0 for none (then
      `token_type_ids` in a batch are ignored).
    dropout: on embeddings and on each residual branch.
    attention_dropout: on the attention probabilities.
    layer_norm_eps: epsilon of every LayerNorm.
    pre_norm: LayerNorm before each branch and a `final_norm` (GPT-2); else
      after each residual sum, with a LayerNorm on the embeddings (BERT).
    causal: each token attends only to itself and earlier tokens.
    activation: 'gelu' (exact), 'gelu_new' (tanh approximation) or 'relu'.
    pad_token_id: id of the padding token.
    position_offset: added to the default positions `0..L-1` (RoBERTa: 2, its
      padding index + 1). Outside decoding, a nonzero offset numbers only the
      real tokens (by `attention_mask`) and puts padding at `position_offset - 1`,
      as RoBERTa does.
    tie_word_embeddings: LM heads project with the word embeddings' transpose.
    pooler: a dense layer and `pooler_activation` on the first token, output
      as `pooled`.
    pooler_activation: 'tanh' (BERT) or 'relu' (DistilBERT's `pre_classifier`).
    initializer_range: standard deviation of the normal initialisers.
    dtype: computation dtype (parameters stay float32); attention scores,
      softmax, LayerNorm statistics and the output `logits` are float32.
    layers: 'fast' (`models.layers`, tuned for XLA:CPU, and the fused
      vocabulary loss) or 'flax' (`nn.Dense`, `nn.Dropout`, plain logits);
      the parameters are the same, so checkpoints load into either.
    decode: keep keys and values in a `cache` collection for generation one
      step at a time (causal models only); see `Transformer`.
    remat: 'none', 'block' or 'dots': what each block keeps for the backward
      pass (`models.memory`); the parameters and results are the same.
    scan_layers: run the blocks with `nn.scan`, their parameters stacked under
      `layers/` (leading axis `num_layers`) instead of `layer_{i}/`; compile
      time then no longer grows with depth (`models.memory.stack_layers`
      converts between the layouts).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  position_encoding: str = 'learned'
  type_vocab_size: int = 2
  dropout: float = 0.1
  attention_dropout: float = 0.1
  layer_norm_eps: float = 1e-12
  pre_norm: bool = False
  causal: bool = False
  activation: str = 'gelu'
  pad_token_id: int = 0
  position_offset: int = 0
  tie_word_embeddings: bool = True
  pooler: bool = True
  pooler_activation: str = 'tanh'
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  layers: str = 'fast'
  decode: bool = False
  remat: str = 'none'
  scan_layers: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ConfigError(f'num_heads={self.num_heads} must divide '
                        f'hidden_size={self.hidden_size}')
    if self.activation not in _ACTIVATIONS:
      raise ConfigError(f'unknown activation {self.activation!r}; use one of '
                        f'{sorted(_ACTIVATIONS)}')
    if self.pooler_activation not in _POOLER_ACTIVATIONS:
      raise ConfigError(f'unknown pooler_activation {self.pooler_activation!r}; use one of '
                        f'{sorted(_POOLER_ACTIVATIONS)}')
    if self.position_encoding not in _POSITION_ENCODINGS:
      raise ConfigError(f'unknown position_encoding {self.position_encoding!r}; use one of '
                        f'{list(_POSITION_ENCODINGS)}')
    layer_set(self.layers)  # An unknown name is a ConfigError naming the choices.
    check_remat(self.remat)
    if self.decode and not self.causal:
      raise ConfigError('decode=True needs a causal model (causal=True)')


def check_fields(names: Iterable[str], known: Sequence[str] | None = None) -> None:
  """Raises a `ConfigError` naming each of `names` not among `known`.

  `known` defaults to every field of `TransformerConfig`.
  """
  known = list(known or (f.name for f in dataclasses.fields(TransformerConfig)))
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ConfigError(f'unknown Transformer field(s) {unknown}; the fields are {known}')


def _bert(num_layers: int, hidden_size: int, num_heads: int) -> TransformerConfig:
  return TransformerConfig(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                           intermediate_size=4 * hidden_size)


def _gpt2(num_layers: int, hidden_size: int, num_heads: int) -> TransformerConfig:
  return TransformerConfig(vocab_size=50257, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, intermediate_size=4 * hidden_size,
                           max_position_embeddings=1024, type_vocab_size=0,
                           layer_norm_eps=1e-5, pre_norm=True, causal=True,
                           activation='gelu_new', pad_token_id=50256, pooler=False)


# The shapes of the public checkpoints (google/bert_uncased_L-*_H-*, bert-base-uncased,
# roberta-base, distilbert-base-uncased, gpt2); the tiny and mini GPT-2s borrow the
# BERT shapes of the same names. Vary one with `dataclasses.replace`.
PRESETS: dict[str, TransformerConfig] = {
    'bert_tiny': _bert(2, 128, 2),
    'bert_mini': _bert(4, 256, 4),
    'bert_small': _bert(4, 512, 8),
    'bert_base': _bert(12, 768, 12),
    'roberta_base': dataclasses.replace(
        _bert(12, 768, 12), vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, position_offset=2, pooler=False),
    'distilbert_base': dataclasses.replace(_bert(6, 768, 12), type_vocab_size=0, pooler=False),
    'gpt2_tiny': _gpt2(2, 128, 2),
    'gpt2_mini': _gpt2(4, 256, 4),
    'gpt2_small': _gpt2(12, 768, 12),
}


def make_attention_mask(attention_mask_BxL: jax.Array, *, segment_ids_BxL: jax.Array | None = None,
                        causal: bool = False) -> jax.Array:
  """Which keys each query may attend to, as a (B, 1, L, L) boolean.

  Args:
    attention_mask_BxL: 1 for real tokens, 0 for padding; padding is never a key.
    segment_ids_BxL: documents packed in one row; tokens attend only within
      their own segment.
    causal: queries attend only to keys at their position or before.

  Returns:
    `mask[b, 0, q, k]`, True where query `q` may attend to key `k`.
  """
  b, l = attention_mask_BxL.shape
  mask_Bx1xLxL = jnp.broadcast_to(attention_mask_BxL.astype(bool)[:, None, None, :], (b, 1, l, l))
  if segment_ids_BxL is not None:
    mask_Bx1xLxL &= segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :]
  if causal:
    mask_Bx1xLxL &= jnp.tril(jnp.ones((l, l), bool))
  return mask_Bx1xLxL


def alibi_slopes(num_heads: int) -> jax.Array:
  """ALiBi's per-head slopes 2^(-8h/H), h = 1..H: from gently to sharply local."""
  return 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1) / num_heads)


def alibi_bias(query_positions_BxL: jax.Array, key_positions_BxT: jax.Array,
               num_heads: int) -> jax.Array:
  """Attention-score bias `-slope_h * |i - j|`, (B, H, L, T), for `position_encoding='alibi'`.

  ALiBi (Press et al., 2022) in the symmetric form that MosaicBERT uses for
  encoders; under a causal mask only `j <= i` remain, as in the original.
  """
  distance_BxLxT = jnp.abs(query_positions_BxL[:, :, None] - key_positions_BxT[:, None, :])
  return -alibi_slopes(num_heads)[:, None, None] * distance_BxLxT[:, None].astype(jnp.float32)


def pool_features(hidden_BxLxD: jax.Array, attention_mask_BxL: jax.Array, how: str) -> jax.Array:
  """One vector per sequence: 'first' token, 'last' real token, or 'mean' of the real ones."""
  if how == 'first':
    return hidden_BxLxD[:, 0]
  if how == 'last':
    # The last real token wherever the padding is (left or right).
    l = attention_mask_BxL.shape[1]
    last_B = l - 1 - jnp.argmax(attention_mask_BxL[:, ::-1], axis=1)
    return jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
  if how == 'mean':
    w_BxLx1 = attention_mask_BxL[..., None].astype(hidden_BxLxD.dtype)
    return (hidden_BxLxD * w_BxLx1).sum(1) / jnp.maximum(w_BxLx1.sum(1), 1)
  raise ConfigError(f"unknown pooling {how!r}; use one of {list(_POOLINGS)}")


def _dense(cfg: TransformerConfig, features: int, name: str, std: float | None = None,
           use_bias: bool = True) -> nn.Module:
  return layer_set(cfg.layers).dense(
      features, use_bias=use_bias, dtype=cfg.dtype, name=name,
      kernel_init=nn.initializers.normal(std or cfg.initializer_range))


def _dropout(cfg: TransformerConfig, rate: float, deterministic: bool | None = None) -> nn.Module:
  return layer_set(cfg.layers).dropout(rate, deterministic=deterministic)


def _layer_norm(cfg: TransformerConfig, name: str | None) -> nn.LayerNorm:
  return nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name=name)


def _residual_std(cfg: TransformerConfig) -> float:
  # GPT-2 shrinks the layers that write into the residual stream, so its variance
  # does not grow with depth in a pre-norm stack.
  if not cfg.pre_norm:
    return cfg.initializer_range
  return cfg.initializer_range / (2 * cfg.num_layers) ** 0.5


class SelfAttention(nn.Module):
  """Multi-head self-attention with separate query, key and value projections.

  Queries have length L and keys length T: T = L, except in decoding
  (`config.decode`), where the keys and values of every call so far are kept
  in the `cache` collection (`cached_key`, `cached_value` (B, T, H, K) and
  `cache_index`) and the mask is (B, 1, L, T). `bias_BxHxLxT`, if given, is
  added to the scores (`alibi_bias`). The attention probabilities (B, H, L, T)
  are sown as `intermediates/.../attention_probs`: apply with
  `mutable=['intermediates']` to read them.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_Bx1xLxT: jax.Array, *, train: bool,
               bias_BxHxLxT: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    b, l, d = x_BxLxD.shape
    h = cfg.num_heads
    k = d // h
    q_BxLxHxK, k_BxTxHxK, v_BxTxHxK = (
        _dense(cfg, d, name)(x_BxLxD).reshape(b, l, h, k) for name in ('query', 'key', 'value'))
    if cfg.decode:
      k_BxTxHxK, v_BxTxHxK = self._cached_keys_values(k_BxTxHxK, v_BxTxHxK)
    scores_BxHxLxT = jnp.einsum('bqhk,bthk->bhqt', q_BxLxHxK, k_BxTxHxK,
                                preferred_element_type=jnp.float32) * k ** -0.5
    if bias_BxHxLxT is not None:
      scores_BxHxLxT += bias_BxHxLxT
    # The most negative finite float, not -inf: a query with no key left (padding in a
    # packed row) gets uniform weights instead of NaN.
    scores_BxHxLxT += jnp.where(mask_Bx1xLxT, 0.0, jnp.finfo(jnp.float32).min)
    probs_BxHxLxT = jax.nn.softmax(scores_BxHxLxT, axis=-1)
    self.sow('intermediates', 'attention_probs', probs_BxHxLxT)
    probs_BxHxLxT = _dropout(cfg, cfg.attention_dropout, not train)(probs_BxHxLxT)
    out_BxLxHxK = jnp.einsum('bhqt,bthk->bqhk', probs_BxHxLxT.astype(cfg.dtype), v_BxTxHxK)
    return _dense(cfg, d, 'output', _residual_std(cfg))(out_BxLxHxK.reshape(b, l, d))

  def _cached_keys_values(self, k_BxLxHxK: jax.Array,
                          v_BxLxHxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes this call's keys and values at `cache_index`; returns all T cached ones.

    Initialisation only sizes the cache (T = L) and attends over its own inputs,
    as Flax's decoders do.
    """
    initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, k_BxLxHxK.shape, k_BxLxHxK.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, v_BxLxHxK.shape,
                                 v_BxLxHxK.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    if not initialized:
      return k_BxLxHxK, v_BxLxHxK
    start = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k_BxLxHxK, (0, start, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v_BxLxHxK,
                                                      (0, start, 0, 0))
    cache_index.value = start + k_BxLxHxK.shape[1]
    return cached_key.value, cached_value.value


class MLP(nn.Module):
  """Position-wise feed-forward layer: dense `input`, activation, dense `output`."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.config
    x_BxLxF = _ACTIVATIONS[cfg.activation](_dense(cfg, cfg.intermediate_size, 'input')(x_BxLxD))
    return _dense(cfg, cfg.hidden_size, 'output', _residual_std(cfg))(x_BxLxF)


class TransformerBlock(nn.Module):
  """Attention then MLP, each a residual branch; LayerNorm before (pre-norm) or after."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_Bx1xLxL: jax.Array, *, train: bool,
               bias_BxHxLxL: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    drop = _dropout(cfg, cfg.dropout, not train)
    attention = functools.partial(SelfAttention(cfg, name='attention'), train=train,
                                  bias_BxHxLxT=bias_BxHxLxL)
    attention_norm = _layer_norm(cfg, 'attention_norm')
    mlp = MLP(cfg, name='mlp')
    mlp_norm = _layer_norm(cfg, 'mlp_norm')
    if cfg.pre_norm:
      x_BxLxD = x_BxLxD + drop(attention(attention_norm(x_BxLxD), mask_Bx1xLxL))
      return x_BxLxD + drop(mlp(mlp_norm(x_BxLxD)))
    x_BxLxD = attention_norm(x_BxLxD + drop(attention(x_BxLxD, mask_Bx1xLxL)))
    return mlp_norm(x_BxLxD + drop(mlp(x_BxLxD)))


def _call_block(block: TransformerBlock, x_BxLxD: jax.Array, mask_Bx1xLxL: jax.Array,
                bias_BxHxLxL: jax.Array | None, train: bool) -> jax.Array:
  return block(x_BxLxD, mask_Bx1xLxL, train=train, bias_BxHxLxL=bias_BxHxLxL)


def apply_blocks(cfg: TransformerConfig, x_BxLxD: jax.Array, mask_Bx1xLxL: jax.Array,
                 bias_BxHxLxL: jax.Array | None = None, *, train: bool) -> jax.Array:
  """Runs `cfg.num_layers` blocks as `cfg.remat` and `cfg.scan_layers` say.

  Call it from a compact method: the blocks become its children, named
  `layer_{i}` or, scanned, one `layers` whose parameters (and decoding cache,
  and sown attention probabilities) carry a leading layer axis.
  """
  call = rematerialised(_call_block, cfg.remat, static_argnums=(4,), in_scan=cfg.scan_layers)
  if not cfg.scan_layers:
    for i in range(cfg.num_layers):
      x_BxLxD = call(TransformerBlock(cfg, name=f'layer_{i}'), x_BxLxD, mask_Bx1xLxL,
                     bias_BxHxLxL, train)
    return x_BxLxD

  def body(block, x_BxLxD, mask_Bx1xLxL, bias_BxHxLxL):
    return call(block, x_BxLxD, mask_Bx1xLxL, bias_BxHxLxL, train), None

  scan = nn.scan(body, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                 split_rngs={'params': True, 'dropout': True},
                 in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers)
  x_BxLxD, _ = scan(TransformerBlock(cfg, name='layers'), x_BxLxD, mask_Bx1xLxL, bias_BxHxLxL)
  return x_BxLxD


class Embeddings(nn.Module):
  """Word + position (+ token type) embeddings; LayerNorm for post-norm models; dropout.

  With `position_encoding='alibi'` there is no position table: the attention
  scores carry word order instead.

  `attend` projects hidden states onto the vocabulary with the word
  embeddings' transpose (tied LM heads).
  """
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    embed = lambda n: nn.Embed(n, cfg.hidden_size, dtype=cfg.dtype,
                               embedding_init=nn.initializers.normal(cfg.initializer_range))
    self.word_embeddings = embed(cfg.vocab_size)
    if cfg.position_encoding == 'learned':
      self.position_embeddings = embed(cfg.max_position_embeddings)
    if cfg.type_vocab_size:
      self.token_type_embeddings = embed(cfg.type_vocab_size)
    if not cfg.pre_norm:
      self.layer_norm = _layer_norm(cfg, None)
    self.dropout = _dropout(cfg, cfg.dropout)

  def __call__(self, input_ids_BxL: jax.Array, positions_BxL: jax.Array,
               token_type_ids_BxL: jax.Array | None = None, *, train: bool) -> jax.Array:
    cfg = self.config
    x_BxLxD = self.word_embeddings(input_ids_BxL)
    if cfg.position_encoding == 'learned':
      x_BxLxD += self.position_embeddings(positions_BxL)
    if cfg.type_vocab_size:
      if token_type_ids_BxL is None:
        token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
      x_BxLxD += self.token_type_embeddings(token_type_ids_BxL)
    if not cfg.pre_norm:
      x_BxLxD = self.layer_norm(x_BxLxD)
    return self.dropout(x_BxLxD, deterministic=not train)

  def table(self) -> jax.Array:
    """The (V, D) word embeddings in the compute dtype."""
    return jnp.asarray(self.word_embeddings.embedding, self.config.dtype)

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    return layer_set(self.config.layers).tied_logits(x_BxLxD.astype(self.config.dtype),
                                                     self.table())


class _Pooler(nn.Module):
  """BERT's pooler: dense + tanh (or the config's `pooler_activation`) on the first token."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    cfg = self.config
    x_BxD = _dense(cfg, cfg.hidden_size, 'dense')(x_BxD)
    return _POOLER_ACTIVATIONS[cfg.pooler_activation](x_BxD)


class Transformer(nn.Module):
  """The backbone: embeddings and `num_layers` blocks, an encoder or (if `causal`) a decoder.

  Batch keys: `input_ids` (B, L) int32; optional `attention_mask` (1 real, 0
  padding; default all real), `token_type_ids`, `positions` (default
  `arange(L) + position_offset`), and `segment_ids` for packed documents (give
  `positions` that restart at each document too).

  Decoding (`config.decode`): `init` with `input_ids` of shape (B, T) sizes a
  cache of T tokens (T + `position_offset` at most `max_position_embeddings`).
  `apply` with that cache and `mutable=['cache']` then takes the next L >= 1
  tokens of each row (a whole prompt, then one token at a time): they attend to
  every real token cached so far and to themselves causally, and their default
  positions continue from the cache index. `attention_mask` marks padding keys
  (for left-padded prompts); `segment_ids` are not supported. Writing past T
  is not checked.

  Returns:
    `hidden_states` (B, L, D) of the last layer; `pooled` (B, D) when the config
    has a pooler; `features` (B, D): `pooled` if present, else the last real
    token of a causal model or the first token of an encoder.
  """
  config: TransformerConfig

  def setup(self):
    self.embeddings = Embeddings(self.config)

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    cfg = self.config
    input_ids_BxL = batch['input_ids']
    b, l = input_ids_BxL.shape
    attention_mask_BxL = batch.get('attention_mask')
    if attention_mask_BxL is None:
      attention_mask_BxL = jnp.ones((b, l), jnp.int32)
    start = 0
    if cfg.decode:
      start, decode_mask_Bx1xLxT = self._decode_cache(attention_mask_BxL, batch)
    positions_BxL = batch.get('positions')
    if positions_BxL is None and cfg.position_offset and not cfg.decode:
      # RoBERTa's numbering: real tokens from `position_offset` on, padding at the
      # padding index just below, wherever the padding is.
      mask_BxL = attention_mask_BxL.astype(jnp.int32)
      positions_BxL = jnp.cumsum(mask_BxL, axis=1) * mask_BxL + cfg.position_offset - 1
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l) + start + cfg.position_offset, (b, l))
    x_BxLxD = self.embeddings(input_ids_BxL, positions_BxL, batch.get('token_type_ids'),
                              train=train)
    mask_Bx1xLxL = make_attention_mask(attention_mask_BxL, segment_ids_BxL=batch.get('segment_ids'),
                                       causal=cfg.causal)
    query_positions_BxL = key_positions_BxT = positions_BxL
    if cfg.decode:
      mask_Bx1xLxL = decode_mask_Bx1xLxT
      # ALiBi measures distance between cache slots, the same as between positions:
      # a prompt's real tokens are contiguous after its left padding.
      query_positions_BxL = start + jnp.arange(l)[None]
      key_positions_BxT = jnp.arange(mask_Bx1xLxL.shape[-1])[None]
    bias_BxHxLxL = None
    if cfg.position_encoding == 'alibi':
      bias_BxHxLxL = alibi_bias(query_positions_BxL, key_positions_BxT, cfg.num_heads)
    x_BxLxD = apply_blocks(cfg, x_BxLxD, mask_Bx1xLxL, bias_BxHxLxL, train=train)
    if cfg.pre_norm:
      x_BxLxD = _layer_norm(cfg, 'final_norm')(x_BxLxD)
    out = {'hidden_states': x_BxLxD}
    if cfg.pooler:
      out['pooled'] = out['features'] = _Pooler(cfg, name='pooler')(x_BxLxD[:, 0])
    else:
      out['features'] = pool_features(x_BxLxD, attention_mask_BxL,
                                      'last' if cfg.causal else 'first')
    return out

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    """Logits over the vocabulary with the tied word embeddings: `x @ E.T`."""
    return self.embeddings.attend(x_BxLxD)

  def word_table(self) -> jax.Array:
    """The (V, D) word embeddings, for a tied output projection."""
    return self.embeddings.table()

  def _decode_cache(self, attention_mask_BxL: jax.Array,
                    batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """Cache index of this call's first token, and its (B, 1, L, T) mask over the cache.

    The cache keeps which of its T slots hold real (unpadded) tokens, so that
    padding in a prompt stays masked in every later step.
    """
    cfg = self.config
    b, l = attention_mask_BxL.shape
    if batch.get('segment_ids') is not None:
      raise ConfigError('segment_ids are not supported in decoding; give each document its own '
                        'row, left-padded with attention_mask 0')
    initialized = self.has_variable('cache', 'index')
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    key_mask = self.variable('cache', 'key_mask', jnp.zeros, (b, l), bool)
    if not initialized:
      # The position table is a gather, which would clamp out-of-range positions silently.
      if (cfg.position_encoding == 'learned'
          and l + cfg.position_offset > cfg.max_position_embeddings):
        raise ConfigError(f'a decoding cache of {l} tokens needs positions up to '
                          f'{l + cfg.position_offset - 1}, beyond max_position_embeddings='
                          f'{cfg.max_position_embeddings}; shorten the prompt or the '
                          f'number of new tokens')
      return jnp.zeros((), jnp.int32), make_attention_mask(attention_mask_BxL, causal=True)
    start = index.value
    key_mask.value = jax.lax.dynamic_update_slice(key_mask.value,
                                                  attention_mask_BxL.astype(bool), (0, start))
    index.value = start + l
    t = key_mask.value.shape[1]
    causal_LxT = jnp.arange(t)[None, :] <= start + jnp.arange(l)[:, None]
    return start, key_mask.value[:, None, None, :] & causal_LxT


class LMHead(nn.Module):
  """Hidden states to vocabulary logits, or straight to their cross-entropy.

  With `transform` (the BERT family's masked-LM head): dense, activation and
  LayerNorm first, and a bias on the logits; without it (GPT-2) the bare
  projection. The projection is the encoder's tied word embeddings when the
  config ties them, else a dense `decoder` without bias.

  Returns `{'logits': (B, L, V)}` in float32; given `targets` and `weights`
  (B, L), tied embeddings and the 'fast' layers, `{'nll_sum', 'hits'}` of
  `projected_nll` instead, which never materialises the logits.
  """
  config: TransformerConfig
  transform: bool = True

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, encoder: 'Transformer',
               targets_BxL: jax.Array | None = None,
               weights_BxL: jax.Array | None = None) -> dict[str, jax.Array]:
    cfg = self.config
    if self.transform:
      x_BxLxD = _ACTIVATIONS[cfg.activation](_dense(cfg, cfg.hidden_size, 'dense')(x_BxLxD))
      x_BxLxD = _layer_norm(cfg, 'layer_norm')(x_BxLxD)
    bias_V = (self.param('bias', nn.initializers.zeros, (cfg.vocab_size,))
              if self.transform else None)
    layers = layer_set(cfg.layers)
    if targets_BxL is not None and cfg.tie_word_embeddings and layers.fused_loss:
      nll_sum, hits_BxL = projected_nll(x_BxLxD.astype(cfg.dtype), encoder.word_table(), bias_V,
                                        targets_BxL, weights_BxL)
      return {'nll_sum': nll_sum, 'hits': hits_BxL}
    if cfg.tie_word_embeddings:
      logits_BxLxV = encoder.attend(x_BxLxD)
    else:
      logits_BxLxV = _dense(cfg, cfg.vocab_size, 'decoder', use_bias=False)(x_BxLxD)
    # Cast before the bias, so that the bias (and its gradient) is added in float32.
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    if bias_V is not None:
      logits_BxLxV = layers.add_bias(logits_BxLxV, bias_V)
    return {'logits': logits_BxLxV}
