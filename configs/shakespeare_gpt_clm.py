"""GPT-mini causal-LM pre-training on the training text of the Shakespeare plays.

The text is packed into rows of 256 tokens (a byte-level BPE tokenizer trained on
the same text); no token attends to, or predicts, another document (a play's run
of training sections). `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('shakespeare_common.py'))


def get_config(variant=None):
  c = run_config()
  c.data = common.data('shakespeare_lm', variant, seq_len=256, kind='bpe', task='lm')
  c.data.batch_size = 16
  c.model = dict(name='gpt_clm', transformer=common.transformer('gpt2_mini', variant))
  c.objective = dict(name='causal_lm')
  if variant == 'tiny':
    c.data.batch_size = 8
  return common.lm_schedule(c, variant, steps=1000)
