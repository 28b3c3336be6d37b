"""Task heads and the models that put an encoder under them."""

from typing import Any

import flax.linen as nn
import jax


class ClassifierHead(nn.Module):
  """Dropout then a linear layer from features to class logits."""
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, features_BxD: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.Dropout(self.dropout, deterministic=not train)(features_BxD)
    return nn.Dense(self.num_classes, name='dense')(x)


class ProjectionHead(nn.Module):
  """Two-layer MLP on features (a contrastive projection, a pretext-task head)."""
  hidden: int = 256
  out: int = 128

  @nn.compact
  def __call__(self, features_BxD: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, name='hidden')(features_BxD))
    return nn.Dense(self.out, name='out')(x)


class Classifier(nn.Module):
  """An encoder with a classification head; outputs `features` and `logits`.

  Parameters live under `encoder/...` and `head/...`, so fine-tuning can graft a
  pre-trained `encoder` and start a `new_head`.
  """
  encoder: nn.Module
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    logits = ClassifierHead(self.num_classes, self.dropout, name='head')(out['features'],
                                                                         train=train)
    return {'features': out['features'], 'logits': logits}


class Autoencoder(nn.Module):
  """Encoder and decoder; outputs `features` and `reconstruction` of `batch['image']`.

  The input to encode is `batch['corrupted']` when present (denoising), else the image.
  """
  encoder: nn.Module
  decoder: nn.Module

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch.get('corrupted', batch['image']), train=train)
    return {'features': out['features'],
            'reconstruction': self.decoder(out['feature_map'], train=train)}


class PretextClassifier(nn.Module):
  """An encoder with a two-layer MLP head for a pretext task; outputs `features`, `logits`.

  The head lives under `pretext_head/...` and is discarded when fine-tuning
  grafts `encoder/...`.
  """
  encoder: nn.Module
  num_outputs: int = 4
  hidden: int = 256

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    logits = ProjectionHead(self.hidden, self.num_outputs, name='pretext_head')(
        out['features'], train=train)
    return {'features': out['features'], 'logits': logits}
