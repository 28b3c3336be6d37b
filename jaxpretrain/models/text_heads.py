"""Task models on a `Transformer`: masked and causal LM, classification, regression.

Every model keeps its backbone under `encoder/...` (a causal decoder too, so one
grafting rule fits every family) and its task layers under `head/...`. Each
returns the backbone's outputs (`hidden_states` (B, L, D), `features`, and
`pooled` when the config has a pooler) with `logits` added (or, for the
language models given targets, their loss); `features` is what the model's head
reads. `logits` are float32 whatever the config's compute dtype.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.errors import ConfigError
from jaxpretrain.models.heads import ClassifierHead
from jaxpretrain.models.transformer import LMHead, Transformer, TransformerConfig, pool_features


class BertForMaskedLM(nn.Module):
  """A bidirectional encoder with a masked-LM head (BERT, RoBERTa, DistilBERT by config).

  When the batch carries `masked_positions` (B, M) int32, only those positions
  are projected onto the vocabulary: `logits` (B, M, V). Otherwise `logits`
  are (B, L, V). With `targets` and `target_weights` (B, M) as well, the model
  returns their cross-entropy as `nll_sum` and `hits` instead (see `LMHead`).
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    encoder = Transformer(self.config, name='encoder')
    out = encoder(batch, train=train)
    x = out['hidden_states']
    if 'masked_positions' in batch:
      # Gather before the head: the vocabulary projection dominates the cost.
      x = jnp.take_along_axis(x, batch['masked_positions'][..., None], axis=1)
    head = LMHead(self.config, name='head')
    return {**out, **head(x, encoder, batch.get('targets'), batch.get('target_weights'))}


class GPTForCausalLM(nn.Module):
  """A causal decoder with a language-model head: `logits` (B, L, V) predict the next token.

  With `targets` and `target_weights` (B, L) in the batch, the model returns
  their cross-entropy as `nll_sum` and `hits` instead of `logits` (see `LMHead`).
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    encoder = Transformer(self.config, name='encoder')
    out = encoder(batch, train=train)
    head = LMHead(self.config, transform=False, name='head')
    return {**out, **head(out['hidden_states'], encoder, batch.get('targets'),
                          batch.get('target_weights'))}


def _sequence_features(out: dict[str, jax.Array], batch: dict[str, Any],
                       pooling: str | None) -> jax.Array:
  """The (B, D) vector a sequence-level head reads; `None` takes the backbone's `features`."""
  if pooling is None:
    return out['features']
  if pooling == 'pooled':
    if 'pooled' not in out:
      raise ConfigError("pooling='pooled' needs a config with pooler=True; "
                        "use 'first', 'last' or 'mean' instead")
    return out['pooled']
  hidden_BxLxD = out['hidden_states']
  mask_BxL = batch.get('attention_mask', jnp.ones(hidden_BxLxD.shape[:2], jnp.int32))
  return pool_features(hidden_BxLxD, mask_BxL, pooling)


def _sequence_model(cfg: TransformerConfig, batch: dict[str, Any], train: bool, num_outputs: int,
                    pooling: str | None, dropout: float | None) -> dict[str, jax.Array]:
  """Backbone, pooling and a linear head, created in the calling module's scope."""
  out = Transformer(cfg, name='encoder')(batch, train=train)
  features_BxD = _sequence_features(out, batch, pooling)
  dropout = cfg.dropout if dropout is None else dropout
  logits = ClassifierHead(num_outputs, dropout, cfg.dtype, name='head')(features_BxD, train=train)
  return {**out, 'features': features_BxD, 'logits': logits}


class SequenceClassifier(nn.Module):
  """One label per sequence: `logits` (B, num_classes).

  Attributes:
    config: the backbone.
    num_classes: number of classes.
    pooling: what the head reads: 'pooled' (the pooler's output), 'first'
      token, 'last' real token, 'mean' of real tokens, or None for the
      backbone's `features` (pooled if there is a pooler, else last token of a
      decoder, first of an encoder).
    dropout: before the head; None uses the config's.
  """
  config: TransformerConfig
  num_classes: int
  pooling: str | None = None
  dropout: float | None = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    return _sequence_model(self.config, batch, train, self.num_classes, self.pooling, self.dropout)


class Regressor(nn.Module):
  """One real number per sequence: `logits` of shape (B,).

  The trailing axis of size one is dropped so that `logits - labels` with
  labels (B,) cannot broadcast to (B, B). Attributes as `SequenceClassifier`.
  """
  config: TransformerConfig
  pooling: str | None = None
  dropout: float | None = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = _sequence_model(self.config, batch, train, 1, self.pooling, self.dropout)
    return {**out, 'logits': out['logits'][:, 0]}


class TokenClassifier(nn.Module):
  """One label per token (tagging): `logits` (B, L, num_classes) from the hidden states."""
  config: TransformerConfig
  num_classes: int
  dropout: float | None = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = Transformer(self.config, name='encoder')(batch, train=train)
    dropout = self.config.dropout if self.dropout is None else self.dropout
    logits = ClassifierHead(self.num_classes, dropout, self.config.dtype, name='head')(
        out['hidden_states'], train=train)
    return {**out, 'features': out['hidden_states'], 'logits': logits}
