"""Composable fine-tuning transforms."""

from jaxpretrain.finetune.base import Transform, chain, identity, make_transform
from jaxpretrain.finetune.create import create_state, split_trainable
from jaxpretrain.finetune.lora import export_adapters, load_adapters, lora, merge
from jaxpretrain.finetune.masks import bitfit, freeze, linear_probe, unfreeze_schedule
from jaxpretrain.finetune.optim import (l2sp, layer_ids, layerwise_lr_decay, lr_multipliers,
                                        weight_decay)
from jaxpretrain.finetune.reshape import interpolate_positions, resize_vocab
from jaxpretrain.finetune.surgery import (GraftReport, fresh_value, from_pretrained, graft,
                                         new_head, reinit, with_teacher)
