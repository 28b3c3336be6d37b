"""jaxpretrain: pre-training and fine-tuning in JAX."""

from jaxpretrain import finetune, models, objectives, parallel
from jaxpretrain.errors import JaxpretrainError
from jaxpretrain.state import TrainState
from jaxpretrain.step import apply_model, make_eval_step, make_train_step

__version__ = '0.1.0'
