"""An image encoder under a projection head, for contrastive pre-training."""

from typing import Any

import flax.linen as nn
import jax

from jaxpretrain.models.heads import ProjectionHead, compute_dtype


class ContrastiveModel(nn.Module):
  """An encoder with a two-layer MLP projection; outputs `features` and `projection`.

  The contrastive loss reads the projection; the head lives under
  `projection/...` and is discarded when fine-tuning grafts `encoder/...`, since
  the features before the projection transfer better (Chen et al., 2020). The
  projection computes in `dtype` (None: the encoder's) and comes out float32.
  """
  encoder: nn.Module
  projection_hidden: int = 256
  projection_dim: int = 128
  dtype: Any = None

  @nn.compact
  def __call__(self, batch: dict[str, Any], *, train: bool = False) -> dict[str, jax.Array]:
    out = self.encoder(batch['image'], train=train)
    head = ProjectionHead(self.projection_hidden, self.projection_dim, compute_dtype(self),
                          name='projection')
    projection = head(out['features'], train=train)
    return {'features': out['features'], 'projection': projection}
