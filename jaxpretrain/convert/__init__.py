"""Import of public checkpoints: Hugging Face BERT, RoBERTa, DistilBERT and GPT-2."""

from jaxpretrain.convert.files import is_hf_directory, read_config, read_state_dict
from jaxpretrain.convert.hf import (ARCHITECTURES, from_state_dict, hf_params, hf_variables,
                                   load_hf)
from jaxpretrain.convert.hf_vision import VISION_ARCHITECTURES, read_preprocessor_config
