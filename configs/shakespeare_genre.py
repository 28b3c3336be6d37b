"""A passage of Shakespeare → its play's genre (six classes), fine-tuned or from scratch.

Set `finetune.pretrained` and `data.tokenizer.path` to a `shakespeare_bert_mlm`
work directory to start from its encoder and tokenizer; leave `pretrained` empty
to train the same classifier from scratch. Validation and test passages come from
held-out sections of every play (`data.split_by='section'`), never seen in
pre-training or fine-tuning; `data.split_by='play'` holds out whole plays instead.
Split the pre-training run alike. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('shakespeare_common.py'))


def get_config(variant=None):
  c = run_config()
  c.data = common.data('shakespeare_genre', variant, seq_len=128, task='classification')
  # Masked LM trains no [CLS] summary (there is no next-sentence task), so the head
  # reads the mean of the real tokens' states.
  c.model = dict(name='text_classifier', num_classes=6, pooling='mean', dropout=0.1,
                 transformer=common.transformer('bert_mini', variant))
  c.model.transformer.position_encoding = common.ENCODER_POSITION_ENCODING
  c.objective = dict(name='classification')
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 100
  c.train.epochs = 3
  c.train.log_every = 50
  c.checkpoint.best_metric = 'accuracy'
  c.checkpoint.keep_best = 1
  c.finetune.new_head = 'head/.*'
  if variant == 'tiny':
    c.optimizer.warmup_steps = 1
    c.train.epochs = 1
    c.train.steps = 4
    c.train.eval_every_steps = 4
    c.train.log_every = 2
  return c
