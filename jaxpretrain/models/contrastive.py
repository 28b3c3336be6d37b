"""An image encoder under a projection head, for contrastive pre-training."""

from typing import Any

import flax.linen as nn
import jax

from jaxpretrain.models.heads import ProjectionHead


class ContrastiveModel(nn.Module):
  """An encoder with a two-layer MLP projection; outputs `features` and `projection`.

  The contrastive loss reads the projection; the head lives under
  `projection/...` and is discarded when fine-tuning grafts `encoder/...`, since
  the features before the projection transfer better (Chen et al., 2020).
  """
  encoder: nn.Module
  projection_hidden: int = 256
  projection_dim: int = 128

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    projection = ProjectionHead(self.projection_hidden, self.projection_dim, name='projection')(
        out['features'], train=train)
    return {'features': out['features'], 'projection': projection}
