"""Composable fine-tuning transforms."""

from jaxpretrain.finetune.base import Transform, chain, identity, make_transform
from jaxpretrain.finetune.create import create_state, split_trainable
from jaxpretrain.finetune.masks import freeze
from jaxpretrain.finetune.optim import lr_multipliers
from jaxpretrain.finetune.surgery import (GraftReport, fresh_value, from_pretrained, graft,
                                         new_head, reinit)
