"""Text runs from configs: BERT MLM pre-training, genre fine-tuning, GPT CLM (tiny variants).

The runs are those of the tiny text recipe (`text_recipe_run`), which runs each
config as `jaxpretrain pretrain|finetune` would.
"""

import json

import numpy as np
import pytest

from jaxpretrain import build, checkpoint, config as config_lib, loop
from jaxpretrain.data import text, tokenizers
from jaxpretrain.errors import ConfigError, JaxpretrainError


@pytest.fixture(scope='module')
def bert_run(text_recipe_run):
  return text_recipe_run / 'pretrain'


def test_mlm_pretraining_saves_its_tokenizer_and_sizes_the_model_to_it(bert_run):
  tokenizer = tokenizers.load(bert_run)
  assert {'pad', 'cls', 'sep', 'mask'} <= set(tokenizers.special_ids(tokenizer))
  manifest = checkpoint.read_manifest(bert_run)
  assert manifest['config']['model']['transformer']['vocab_size'] == tokenizer.get_vocab_size()
  records = [json.loads(l) for l in (bert_run / 'metrics.jsonl').read_text().splitlines()]
  validation = [r for r in records if r['split'] == 'validation']
  assert validation and np.isfinite(validation[-1]['loss']) and validation[-1]['tokens'] > 0


def test_genre_finetuning_starts_from_the_pretrained_encoder(bert_run, text_recipe_run):
  finetuned = text_recipe_run / 'finetune' / 'lr=0.0003'
  config = config_lib.override(config_lib.load('configs/shakespeare_genre.py:tiny'), [
      f'finetune.pretrained={bert_run}', f'data.tokenizer.path={bert_run}'])
  validation = [r for r in loop.read_metrics(finetuned) if r['split'] == 'validation']
  assert validation and 0.0 <= validation[-1]['accuracy'] <= 1.0
  assert not (finetuned / 'tokenizer.json').exists()  # the pre-training run's is used
  manifest = checkpoint.read_manifest(finetuned)
  assert manifest['finetune'][0] == {**manifest['finetune'][0], 'name': 'from_pretrained',
                                     'source': str(bert_run)}
  pre = checkpoint.restore_params(bert_run)['encoder']['layer_0']['attention']['query']['kernel']
  start = checkpoint.restore_params(finetuned)['encoder']['layer_0']['attention']['query']
  assert pre.shape == start['kernel'].shape
  result = loop.evaluate(config, finetuned, split='test')
  assert result['examples'] == len(text.genre_passages('test'))


def test_starting_from_another_position_encoding_is_a_clear_error(bert_run, tmp_path):
  config = config_lib.override(config_lib.load('configs/shakespeare_genre.py:tiny'), [
      f'finetune.pretrained={bert_run}', f'data.tokenizer.path={bert_run}',
      'model.transformer.position_encoding=learned'])
  with pytest.raises(ConfigError, match="position_encoding='alibi'.*position_encoding=alibi"):
    loop.train(config, tmp_path / 'genre', progress=False)


def test_gpt_clm_pretraining_runs_on_packed_plays(text_recipe_run):
  lm = text_recipe_run / 'lm'
  assert checkpoint.read_manifest(lm)['config']['model']['name'] == 'gpt_clm'
  validation = [r for r in loop.read_metrics(lm) if r['split'] == 'validation']
  assert validation and np.isfinite(validation[-1]['loss']) and validation[-1]['tokens'] > 0
  assert set(tokenizers.special_ids(tokenizers.load(lm))) == {'eos'}


def test_masked_lm_with_a_tokenizer_without_mask_token_is_a_clear_error(tmp_path):
  config = config_lib.override(config_lib.load('configs/shakespeare_bert_mlm.py:tiny'),
                               ['data.tokenizer.kind=bpe'])
  with pytest.raises(JaxpretrainError, match='(mask|cls) token'):
    loop.train(config, tmp_path, progress=False)


def test_every_transformer_field_is_settable_from_the_command_line():
  config = config_lib.override(config_lib.load('configs/shakespeare_bert_mlm.py:tiny'), [
      'model.transformer.pre_norm=True', 'model.transformer.dropout=0.0',
      'model.transformer.vocab_size=50'])
  model = build.model(config.model)
  assert (model.config.pre_norm, model.config.dropout, model.config.vocab_size) == (True, 0.0, 50)
  # Fields left alone keep the preset's values.
  assert model.config.num_layers == 2 and model.config.attention_dropout == 0.1
  with pytest.raises(ConfigError, match='pre_norm'):
    config_lib.override(config, ['model.transformer.pre_nrom=True'])
  with pytest.raises(ConfigError, match='unknown Transformer field'):
    config_lib.transformer_section('bert_mini', pre_nrom=True)
