"""Flax linen models returning dicts of named outputs."""

from jaxpretrain.models.conv import (ConvDecoder, ConvEncoder, PixelShuffleDecoder, depth_to_space,
                                     space_to_depth)
from jaxpretrain.models.core import init_variables, make_apply_fn, set_fields, sync_batch_norm
from jaxpretrain.models.layers import LAYER_SETS, Dense, Dropout
from jaxpretrain.models.memory import REMAT_POLICIES, stack_layers, unstack_layers
from jaxpretrain.models.heads import (Autoencoder, Classifier, ClassifierHead,
                                      PretextClassifier, ProjectionHead)
from jaxpretrain.models.contrastive import ContrastiveModel
from jaxpretrain.models.inception import INCEPTION_PRESETS, InceptionV1, inception
from jaxpretrain.models.mae import MaskedAutoencoder
from jaxpretrain.models.resnet import RESNET_PRESETS, ResNet, resnet
from jaxpretrain.models.vgg import VGG, VGG_PRESETS, vgg
from jaxpretrain.models.vit import VIT_PRESETS, ViT, vit
from jaxpretrain.models.text_heads import (BertForMaskedLM, GPTForCausalLM, Regressor,
                                           SequenceClassifier, TokenClassifier)
from jaxpretrain.models.transformer import (PRESETS, MLP, Embeddings, LMHead, SelfAttention,
                                            Transformer, TransformerBlock, TransformerConfig,
                                            make_attention_mask, pool_features)
