"""Shared pieces of the Shakespeare text configs: data sections and model sizes."""

import ml_collections

from jaxpretrain.config import transformer_section

# Word order in the encoders: the masked LM and every model started from it (the genre
# classifiers, the distilled student). With BERT's learned positions the masked LM's heads
# spread their attention evenly for all 2,000 steps and its loss stays on the frequency
# plateau (5.82); ALiBi's distance penalty makes attention local from the start (BENCHMARKS.md).
ENCODER_POSITION_ENCODING = 'alibi'


def data(name, variant, *, seq_len, kind='wordpiece', task=''):
  """A text data section: the dataset, the task it feeds, its splits and the run's tokenizer.

  The plays are split by `split_by`: 'section' holds one tenth of every play out
  for validation and one for test, 'play' holds whole plays out (see
  `jaxpretrain.data.text.split_documents`); every run of one recipe must split alike.
  `task` ('mlm', 'lm' or 'classification'; empty: the built-in dataset's own) stays
  when `name` is overridden with a TFDS text dataset, `tfds:<name>`, read from
  `data_dir` ($TFDS_DATA_DIR by default); `text_key` and `label_key` name its features.
  """
  d = ml_collections.ConfigDict(dict(
      name=name, task=task, text_key='text', label_key='label', train_split='train',
      validation_split='validation', split_by='section', seq_len=seq_len, words=64,
      labelled_per_class=0, validation_per_class=0, batch_size=32, eval_batch_size=64,
      in_memory=True, data_dir='', subset_seed=0,
      tokenizer=dict(kind=kind, vocab_size=8192, path='')))
  if variant == 'tiny':
    d.seq_len, d.batch_size, d.eval_batch_size = 32, 8, 256
    d.tokenizer.vocab_size = 400
  return d


def transformer(preset, variant):
  """A Transformer section: a preset of `jaxpretrain.models.PRESETS` (tiny: 2 small layers).

  Every field of the preset can be changed from the command line, e.g.
  `--config.model.transformer.pre_norm=True`; the tokenizer sets `vocab_size`.
  """
  tiny = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
              max_position_embeddings=64) if variant == 'tiny' else {}
  return transformer_section(preset, vocab_size=0, pad_token_id=0, **tiny)


def lm_schedule(c, variant, *, steps, lr=5e-4):
  """The language-model pre-training schedule both MLM and CLM use: `steps` AdamW steps."""
  c.optimizer.lr = lr
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 200
  c.train.steps = steps
  c.train.eval_every_steps = 500
  c.train.log_every = 50
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'
  c.checkpoint.keep_best = 1
  if variant == 'tiny':
    c.optimizer.warmup_steps = 1
    c.train.steps = 4
    c.train.eval_every_steps = 4
    c.train.log_every = 2
  return c
