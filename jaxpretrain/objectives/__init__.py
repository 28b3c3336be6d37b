"""Objectives: pure `(apply_fn, params, batch, rng, *, model_state, train) -> (loss, metrics)`."""

from jaxpretrain.objectives.common import (Objective, call_model, example_weights, weighted_mean,
                                           with_augmentation)
from jaxpretrain.objectives.distillation import (TEACHER, TEACHER_STATE,
                                                 classifier_distillation, soft_cross_entropy)
from jaxpretrain.objectives.language import (TokenTask, causal_lm, clm_task, distillation,
                                             masked_lm, mlm_task, token_objective)
from jaxpretrain.objectives.reconstruction import corrupt, denoising
from jaxpretrain.objectives.supervised import classification
from jaxpretrain.objectives.pretext import rotate90, rotation_prediction
from jaxpretrain.objectives.contrastive import nt_xent, simclr
from jaxpretrain.objectives.masked_image import masked_image_modeling, patchify, unpatchify
from jaxpretrain.objectives.mixing import cutmix, mixup, with_mixing
from jaxpretrain.objectives.semi_supervised import fixmatch
