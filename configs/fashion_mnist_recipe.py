"""The main job: pre-train on 60,000 unlabelled Fashion-MNIST images, fine-tune on 600 labels.

Compares the fine-tuned classifier with the same classifier trained from
scratch on the same 600 labels, on the 10,000 test images. `:tiny` for tests.
"""

import importlib.util
import pathlib

import ml_collections


def _load(name, variant):
  path = pathlib.Path(__file__).with_name(name)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.title = 'Fashion-MNIST: pre-training on unlabelled images, fine-tuning on 1% of labels'
  c.description = ('Self-supervised pre-training on the 60,000 training images without '
                   'labels, then fine-tuning on 600 labelled ones.')
  c.test_split = 'test'
  c.pretrain = _load('fashion_mnist_pretrain.py', variant)
  c.finetune = _load('fashion_mnist_finetune.py', variant)
  if variant == 'tiny':
    c.test_split = 'test[:64]'
  return c
