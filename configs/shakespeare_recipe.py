"""The text recipe: BERT-mini pre-trained on the Shakespeare plays, fine-tuned on their genres.

Masked-LM pre-training on the training text of the plays (no labels), then the
"passage → play genre" classifier fine-tuned from it on 100 labelled passages
per genre, against the same classifier trained from scratch with the same
tokenizer and labels (each choosing its learning rate and epoch on the
validation sections), scored on the test sections: one tenth of every play
each, never trained on. A GPT-mini is
pre-trained the same way on the same text, scored by held-out perplexity, and
continues `generate.prompt`. `:tiny` for tests.
"""

import pathlib

import ml_collections

from jaxpretrain.config import import_file


def _load(name, variant):
  return import_file(pathlib.Path(__file__).with_name(name)).get_config(variant)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.title = 'Shakespeare: pre-training on the plays, fine-tuning on their genres'
  c.description = ('BERT-mini masked-LM pre-training on the training text of the plays, without '
                   'labels, then a passage → play-genre classifier (six genres) fine-tuned from '
                   'it, against the same classifier trained from scratch. Validation and test '
                   'passages come from one held-out tenth of every play each, text that neither '
                   'pre-training nor fine-tuning saw.')
  c.units = 'passages'  # What a test example is, in the report's words.
  c.shared = "architecture, tokenizer (the pre-training run's), data and optimizer"
  c.test_split = 'test'
  # As `jaxpretrain pretrain --config configs/shakespeare_bert_mlm.py` would run it.
  c.pretrain = _load('shakespeare_bert_mlm.py', variant)
  # The recipe points both classifiers at the pre-training run's tokenizer.
  c.finetune = _load('shakespeare_genre.py', variant)
  c.lm = _load('shakespeare_gpt_clm.py', variant)
  # top_k 0 samples from the whole vocabulary.
  c.generate = dict(prompt='O gentle night,', max_new_tokens=200, temperature=0.8, top_k=40,
                    seed=0)
  if variant == 'tiny':  # The tiny classifier keeps its own data and few steps.
    c.finetune_lrs = (3e-4,)
    c.scratch_lrs = (1e-3,)
    c.generate.max_new_tokens = 16
  else:
    # Few labels, as fine-tuning is for: 100 passages per genre (600 of the 9,786), like the
    # main job's 600 images; 15 short epochs, and one learning-rate grid for both classifiers.
    c.finetune.data.labelled_per_class = 100
    c.finetune.train.epochs = 15
    c.finetune.optimizer.warmup_steps = 30
    c.finetune_lrs = c.scratch_lrs = (3e-4, 1e-3)
  return c
