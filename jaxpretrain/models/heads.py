"""Task heads and the models that put an encoder under them.

A head computes in its `dtype` and returns float32, so that losses and
softmaxes read float32 whatever the compute dtype. A model's `dtype` None is
its encoder's (float32 for an encoder without one).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def compute_dtype(module: nn.Module) -> Any:
  """The compute dtype of a model with an `encoder`: its own, else its encoder's, else float32."""
  if module.dtype is not None:
    return module.dtype
  return getattr(module.encoder, 'dtype', None) or jnp.float32


class ClassifierHead(nn.Module):
  """Dropout then a linear layer from features to class logits (float32)."""
  num_classes: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features_BxD: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.Dropout(self.dropout, deterministic=not train)(features_BxD)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='dense')(x).astype(jnp.float32)


class ProjectionHead(nn.Module):
  """Two-layer MLP on features (a contrastive projection, a pretext-task head); float32 out."""
  hidden: int = 256
  out: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features_BxD: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(features_BxD))
    return nn.Dense(self.out, dtype=self.dtype, name='out')(x).astype(jnp.float32)


class Classifier(nn.Module):
  """An encoder with a classification head; outputs `features` and `logits`.

  Parameters live under `encoder/...` and `head/...`, so fine-tuning can graft a
  pre-trained `encoder` and start a `new_head`.
  """
  encoder: nn.Module
  num_classes: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    logits = ClassifierHead(self.num_classes, self.dropout, compute_dtype(self), name='head')(
        out['features'], train=train)
    return {'features': out['features'], 'logits': logits}


class Autoencoder(nn.Module):
  """Encoder and decoder; outputs `features` and `reconstruction` of `batch['image']`.

  The input to encode is `batch['corrupted']` when present (denoising), else the
  image. The reconstruction is float32; the decoder computes in its own dtype.
  """
  encoder: nn.Module
  decoder: nn.Module

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch.get('corrupted', batch['image']), train=train)
    reconstruction = self.decoder(out['feature_map'], train=train)
    return {'features': out['features'], 'reconstruction': reconstruction.astype(jnp.float32)}


class PretextClassifier(nn.Module):
  """An encoder with a two-layer MLP head for a pretext task; outputs `features`, `logits`.

  The head lives under `pretext_head/...` and is discarded when fine-tuning
  grafts `encoder/...`.
  """
  encoder: nn.Module
  num_outputs: int = 4
  hidden: int = 256
  dtype: Any = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    head = ProjectionHead(self.hidden, self.num_outputs, compute_dtype(self), name='pretext_head')
    logits = head(out['features'], train=train)
    return {'features': out['features'], 'logits': logits}
