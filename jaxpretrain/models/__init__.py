"""Flax linen models returning dicts of named outputs."""

from jaxpretrain.models.conv import ConvDecoder, ConvEncoder, space_to_depth
from jaxpretrain.models.core import init_variables, make_apply_fn
from jaxpretrain.models.heads import (Autoencoder, Classifier, ClassifierHead,
                                      PretextClassifier, ProjectionHead)
