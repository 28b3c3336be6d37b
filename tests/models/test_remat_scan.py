"""Rematerialised and scanned blocks compute what the plain model computes; layouts convert."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import cli, convert, finetune, loop
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import (PRESETS, BertForMaskedLM, Classifier, GPTForCausalLM, ViT, memory,
                                Transformer, resnet, stack_layers, unstack_layers)
from jaxpretrain.models.core import init_variables, set_fields

KEY = jax.random.PRNGKey(0)


def _text_batch(vocab=61, b=2, l=8):
  ids = np.random.default_rng(0).integers(1, vocab, (b, l)).astype(np.int32)
  mask = np.ones((b, l), np.int32)
  mask[1, -3:] = 0
  return {'input_ids': ids, 'attention_mask': mask}


def _bert(**fields):
  cfg = dataclasses.replace(PRESETS['bert_tiny'], vocab_size=61, hidden_size=32, num_heads=2,
                            intermediate_size=48, max_position_embeddings=16, dropout=0.0,
                            attention_dropout=0.0, **fields)
  return BertForMaskedLM(cfg)


def _gpt(**fields):
  cfg = dataclasses.replace(PRESETS['gpt2_tiny'], vocab_size=61, hidden_size=32, num_heads=2,
                            intermediate_size=48, max_position_embeddings=16, pad_token_id=0,
                            dropout=0.0, attention_dropout=0.0, **fields)
  return GPTForCausalLM(cfg)


def _vit(**fields):
  return ViT(image_size=8, patch_size=4, channels=1, hidden=16, depth=3, heads=2, mlp_size=24,
             **fields)


def _images(n=2):
  return np.random.default_rng(1).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def _loss_and_grads(model, params, batch, **apply_kwargs):
  """A scalar of every output the model returns, and its gradient."""

  def loss(p):
    out = model.apply({'params': p}, batch, **apply_kwargs)
    return sum(jnp.sum(jnp.sin(v.astype(jnp.float32))) for v in jax.tree.leaves(out))

  return jax.jit(jax.value_and_grad(loss))(params)


def _assert_close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


CASES = {
    'bert': (_bert, _text_batch),
    'gpt': (_gpt, _text_batch),
    'vit': (_vit, _images),
}


@functools.cache
def _plain(family):
  """A family's model maker, batch, parameters, and the plain model's loss and gradients."""
  make, inputs = CASES[family]
  batch = inputs()
  params = init_variables(make(), KEY, batch)['params']
  return make, batch, params, _loss_and_grads(make(), params, batch)


@pytest.mark.parametrize('family', sorted(CASES))
@pytest.mark.parametrize('remat', ['block', 'dots'])
def test_remat_gives_the_plain_models_outputs_and_gradients(family, remat):
  make, batch, params, plain = _plain(family)
  _assert_close(_loss_and_grads(make(remat=remat), params, batch), plain)


@pytest.mark.parametrize('family', sorted(CASES))
@pytest.mark.parametrize('remat', ['none', 'block'])
def test_scanned_layers_equal_the_unrolled_ones(family, remat):
  make, batch, params, (plain_loss, plain_grads) = _plain(family)
  stacked = stack_layers(params)
  scanned = make(scan_layers=True, remat=remat)
  # The scanned model's own parameters have the stacked layout, one slice per layer.
  assert jax.tree.map(np.shape, init_variables(scanned, KEY, batch)['params']) == jax.tree.map(
      np.shape, stacked)
  loss, grads = _loss_and_grads(scanned, stacked, batch)
  _assert_close(loss, plain_loss)
  _assert_close(unstack_layers(grads), plain_grads)


def test_scanned_layers_train_with_dropout():
  cfg = dataclasses.replace(_bert().config, dropout=0.5, scan_layers=True)
  model, batch = Transformer(cfg), _text_batch()
  params = init_variables(model, KEY, batch)['params']
  apply = lambda rng, train: model.apply({'params': params}, batch, train=train,
                                         rngs={'dropout': rng})['hidden_states']
  first, second = apply(KEY, True), apply(jax.random.PRNGKey(1), True)
  assert np.isfinite(first).all()
  assert not np.allclose(first, second) and not np.allclose(first, apply(KEY, False))


def test_resnet_remat_gives_the_plain_gradients_and_batch_statistics():
  batch = {'image': np.random.default_rng(2).uniform(0, 1, (4, 8, 8, 3)).astype(np.float32),
           'label': np.array([0, 1, 2, 0])}

  def make(remat):
    encoder = resnet('resnet18', stem='small', widths=(4, 8, 8, 8), stage_sizes=(1, 1, 1, 1),
                     remat=remat)
    return Classifier(encoder, 3)

  variables = init_variables(make('none'), KEY, batch)

  def run(remat):
    def loss(p):
      out, state = make(remat).apply({**variables, 'params': p}, batch, train=True,
                                     mutable=['batch_stats'])
      return jnp.sum(out['logits'] ** 2), state
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  plain = run('none')
  for remat in ('block', 'dots'):
    _assert_close(run(remat), plain)


def test_stack_and_unstack_are_inverses_and_like_converts_only_what_differs():
  params = init_variables(_bert(), KEY, _text_batch())['params']
  stacked = stack_layers(params)
  assert 'layers' in stacked['encoder'] and 'layer_0' not in stacked['encoder']
  assert stacked['encoder']['layers']['mlp']['input']['kernel'].shape == (2, 32, 48)
  _assert_close(unstack_layers(stacked), params, tol=0)
  _assert_close(memory.like(params, stacked), stacked, tol=0)
  _assert_close(memory.like(stacked, params), params, tol=0)
  _assert_close(memory.like(params, params), params, tol=0)
  with pytest.raises(ValueError, match='not numbered'):
    stack_layers({'layer_0': {'w': np.zeros(2)}, 'layer_2': {'w': np.zeros(2)}})


def test_unknown_remat_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown remat 'sometimes'"):
    _bert(remat='sometimes')
  with pytest.raises(ConfigError, match='unknown remat'):
    init_variables(_vit(remat='always'), KEY, _images())


def test_from_pretrained_reads_either_layout_into_either():
  batch = _text_batch()
  unrolled = init_variables(_bert(), KEY, batch)['params']
  scanned_model = _bert(scan_layers=True)
  fresh = init_variables(scanned_model, jax.random.PRNGKey(7), batch)['params']
  grafted, report = finetune.graft(fresh, unrolled, strict=True)
  _assert_close(grafted, stack_layers(unrolled), tol=0)
  assert not report.missing and not report.unexpected
  back, _ = finetune.graft(init_variables(_bert(), jax.random.PRNGKey(7), batch)['params'],
                           grafted, strict=True)
  _assert_close(back, unrolled, tol=0)


def test_load_hf_into_scanned_layers_equals_the_unrolled_import(tmp_path):
  transformers = pytest.importorskip('transformers')
  from tests.test_convert import hf_model, padded_batch, save  # pylint: disable=g-import-not-at-top
  directory = save(hf_model('BertForMaskedLM', 'bert'), tmp_path / 'bert')
  model, variables = convert.load_hf(directory)
  scanned, scanned_variables = convert.load_hf(directory, scan_layers=True)
  assert scanned.config.scan_layers and 'layers' in scanned_variables['params']['encoder']
  batch = padded_batch('bert')
  np.testing.assert_allclose(scanned.apply(scanned_variables, batch)['logits'],
                             model.apply(variables, batch)['logits'], atol=1e-5)
  with pytest.raises(ConfigError, match='no Transformer blocks'):
    del transformers
    convert.load_hf(_resnet_dir(tmp_path), scan_layers=True)


def _resnet_dir(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8],
                                     depths=[1, 1], layer_type='basic')
  transformers.ResNetModel(config).save_pretrained(tmp_path / 'resnet')
  return tmp_path / 'resnet'


def test_lora_at_init_is_the_base_model_and_each_stacked_layer_gets_its_own_factors():
  batch = _text_batch()
  model = _bert(scan_layers=True)
  transform = finetune.lora(2, targets='encoder/.*kernel', head=None)
  import optax  # pylint: disable=g-import-not-at-top
  state = finetune.create_state(model, transform, tx=optax.adam(1e-3), rng=KEY,
                                example_batch=batch)
  factors = tree_lib.flatten(state.params)
  query = [p for p in factors if p.endswith('layers/attention/query/kernel/a')]
  assert query and factors[query[0]].shape == (2, 32, 2)
  base = model.apply({'params': state.frozen}, batch)['logits']
  np.testing.assert_allclose(state.apply_fn(state.variables(), batch)['logits'], base, atol=1e-6)


def test_layerwise_decay_gives_each_stacked_layer_its_own_depth():
  params = init_variables(_bert(scan_layers=True), KEY, _text_batch())['params']
  ids, num_layers = finetune.layer_ids(params, head='head/.*')
  assert num_layers == 2
  np.testing.assert_array_equal(ids['encoder/layers/mlp/input/kernel'], [1, 2])
  assert ids['encoder/embeddings/word_embeddings/embedding'] == 0


def test_model_switches_reach_the_blocks_and_are_refused_where_there_are_none(tmp_path):
  from jaxpretrain import build, config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.override(config_lib.load('configs/shakespeare_bert_mlm.py:tiny'),
                               ['model.remat=dots', 'model.scan_layers=True'])
  model = build.model(config.model)
  assert model.config.remat == 'dots' and model.config.scan_layers
  conv = config_lib.override(config_lib.load('configs/fashion_mnist_finetune.py:tiny'),
                             ['model.scan_layers=True'])
  with pytest.raises(ConfigError, match='model.scan_layers'):
    build.model(conv.model)
  assert cli.main(['finetune', '--config', 'configs/fashion_mnist_finetune.py:tiny',
                   '--config.model.remat=sometimes', '--workdir', str(tmp_path / 'x')]) == 2
  assert not (tmp_path / 'x' / 'checkpoints').exists()


def test_a_scanned_rematerialised_classifier_finetunes_from_an_unrolled_run_with_lora(
    text_recipe_run, tmp_path):
  bert_run = text_recipe_run / 'pretrain'
  workdir = tmp_path / 'scanned'
  assert cli.main([
      'finetune', '--config', 'configs/shakespeare_genre.py:tiny', '--workdir', str(workdir),
      f'--config.finetune.pretrained={bert_run}', f'--config.data.tokenizer.path={bert_run}',
      '--config.model.scan_layers=True', '--config.model.remat=block',
      '--config.finetune.lora.rank=2', '--config.finetune.layerwise_lr_decay=0.8',
      '--no-progress']) == 0
  validation = [r for r in loop.read_metrics(workdir) if r['split'] == 'validation']
  assert validation and np.isfinite(validation[-1]['loss'])


def test_a_scanned_decoder_generates_what_the_unrolled_one_does():
  from jaxpretrain import generate  # pylint: disable=g-import-not-at-top
  prompt = _text_batch()['input_ids'][:, :5]
  params = init_variables(_gpt(), KEY, {'input_ids': prompt})['params']
  sample = lambda model, p: np.asarray(generate.generate(
      model, p, prompt, max_new_tokens=6, rng=jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(sample(_gpt(scan_layers=True, remat='block'), stack_layers(params)),
                                sample(_gpt(), params))
