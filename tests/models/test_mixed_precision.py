"""Mixed precision: every family trains in bfloat16 with float32 parameters, logits and losses."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxpretrain import build, checkpoint, cli, objectives
from jaxpretrain import config as config_lib
from jaxpretrain import data as data_lib
from jaxpretrain.config import transformer_section
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.step import make_eval_step, make_train_step
from tests.helpers import image_batch

Config = ml_collections.ConfigDict

TINY_TRANSFORMER = dict(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
TINY_VIT = dict(name='vit', preset='vit_tiny', image_size=8, patch_size=4, channels=1, hidden=16,
                depth=1, heads=2, mlp_size=32)
CONV = dict(stages=((4,), (8,)), norm='batch')

# model section, objective, batch kind ('image' or 'text'); each as small as compiles fast.
FAMILIES = {
    'conv_classifier': (dict(name='classifier', num_classes=3, encoder=CONV),
                        objectives.classification, 'image'),
    'resnet': (dict(name='classifier', num_classes=3, encoder=dict(
        name='resnet', preset='resnet18', stem='small', stem_width=4, widths=(4, 8),
        stage_sizes=(1, 1))), objectives.classification, 'image'),
    'vgg': (dict(name='classifier', num_classes=3, encoder=dict(
        name='vgg', preset='vgg11_bn', stages=((4,), (8,)))), objectives.classification, 'image'),
    'inception': (dict(name='classifier', num_classes=3, encoder=dict(
        name='inception', preset='inception_v1', stem='small', stem_widths=(4,),
        stages=(((2, 2, 2, 2, 2, 2),),))), objectives.classification, 'image'),
    'vit': (dict(name='classifier', num_classes=3, encoder=TINY_VIT),
            objectives.classification, 'image'),
    'conv_autoencoder': (dict(name='autoencoder', encoder=CONV,
                              decoder=dict(widths=(4,), out_size=8)),
                         objectives.denoising, 'image'),
    'pixel_shuffle': (dict(name='autoencoder', encoder=CONV,
                           decoder=dict(name='pixel_shuffle', hidden=8, out_size=8)),
                      objectives.denoising, 'image'),
    'mae': (dict(name='mae', encoder=TINY_VIT, decoder=dict(
        decoder_hidden=8, decoder_depth=1, decoder_heads=2)),
            lambda: objectives.masked_image_modeling(patch_size=4), 'image'),
    'contrastive': (dict(name='contrastive', encoder=CONV,
                         projection=dict(projection_hidden=8, projection_dim=4)),
                    lambda: objectives.simclr(augment=None), 'image'),
    'bert_mlm': (dict(name='bert_mlm', transformer=transformer_section('bert_tiny',
                                                                      **TINY_TRANSFORMER)),
                 lambda: objectives.masked_lm(mask_id=3, vocab_size=40, special_ids=(0, 1, 2, 3)),
                 'text'),
    'gpt_clm': (dict(name='gpt_clm', transformer=transformer_section('gpt2_tiny',
                                                                    **TINY_TRANSFORMER)),
                objectives.causal_lm, 'text'),
    'text_classifier': (dict(name='text_classifier', num_classes=3, transformer=transformer_section(
        'bert_tiny', **TINY_TRANSFORMER)), objectives.classification, 'text'),
}


def _batch(kind: str) -> dict[str, np.ndarray]:
  if kind == 'image':
    return image_batch(8)
  rng = np.random.default_rng(0)
  return {'input_ids': rng.integers(4, 40, (8, 16)).astype(np.int32),
          'attention_mask': np.ones((8, 16), np.int32),
          'label': rng.integers(0, 3, 8).astype(np.int32)}


def _state(family: str, dtype: str, **switches):
  section, objective, kind = FAMILIES[family]
  model = build.model(Config({**section, 'dtype': dtype, **switches}))
  batch = _batch(kind)
  state = create_state(model, identity(), tx=optax.adamw(1e-3), rng=jax.random.PRNGKey(0),
                       example_batch=batch)
  return state, objective(), batch


def _floats(tree) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


# A product (matmul or convolution) whose result is bfloat16, in a jaxpr's text.
_BF16_PRODUCT = re.compile(r':bf16\[[\d,]*\] = (dot_general|conv_general_dilated)\b')


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_family_trains_a_bfloat16_step_with_float32_parameters_and_outputs(family):
  state, objective, batch = _state(family, 'bfloat16')
  step = make_train_step(objective)
  # The products really run in bfloat16 (XLA:CPU may still widen them when it compiles).
  assert _BF16_PRODUCT.search(str(jax.make_jaxpr(step)(state, batch)))
  new, metrics = jax.jit(step)(state, batch)
  assert np.isfinite(float(metrics['loss']))
  assert metrics['loss'].dtype == jnp.float32
  for tree in (new.params, new.opt_state, new.model_state):
    assert all(x.dtype == jnp.float32 for x in _floats(tree))
  outputs = jax.eval_shape(lambda v: new.apply_fn(v, batch, train=False), new.variables())
  for name in ('logits', 'reconstruction', 'predicted_patches', 'projection'):
    if name in outputs:
      assert outputs[name].dtype == jnp.float32, name


# The dtype of each sum and of each normalisation's 1 / sqrt(variance + eps), in a jaxpr.
_SUM = re.compile(r':(\w+)\[[\d,]*\] = reduce_sum\b')
_RSQRT = re.compile(r':(\w+)\[[\d,]*\] = rsqrt\b')


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_normalisation_statistics_and_sums_of_a_bfloat16_forward_pass_are_float32(family):
  """Flax normalises half floats in float32 (its default `force_float32_reductions`).

  With `force_float32_reductions=False` the statistics would be bfloat16 and this fails.
  """
  section, _, kind = FAMILIES[family]
  model = build.model(Config({**section, 'dtype': 'bfloat16'}))
  batch, rngs = _batch(kind), {'dropout': jax.random.PRNGKey(0)}
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
  forward = str(jax.make_jaxpr(lambda v: model.apply(v, batch, train=True, rngs=rngs,
                                                     mutable=['batch_stats']))(variables))
  for pattern in (_SUM, _RSQRT):
    dtypes = pattern.findall(forward)
    assert dtypes and set(dtypes) == {'f32'}, (pattern.pattern, dtypes)


def test_an_unknown_dtype_is_a_config_error_naming_the_valid_ones():
  with pytest.raises(ConfigError, match=r"unknown model.dtype 'int8'.*bfloat16.*float16.*float32"):
    _state('conv_classifier', 'int8')


@pytest.mark.parametrize('family', ['bert_mlm', 'gpt_clm'])
def test_fast_and_flax_layers_compute_alike_and_load_each_others_checkpoints(family, tmp_path):
  (fast, objective, batch), (flax_state, _, _) = (_state(family, 'float32', layers=layers)
                                                  for layers in ('fast', 'flax'))
  assert jax.tree.structure(fast.params) == jax.tree.structure(flax_state.params)
  trained, _ = jax.jit(make_train_step(objective))(fast, batch)
  with checkpoint.Checkpointer(tmp_path / 'checkpoints', async_save=False) as ckpt:
    ckpt.save(trained, force=True)
    restored, _ = ckpt.restore(flax_state)
  logits = lambda s: jax.jit(lambda v: s.apply_fn(v, batch, train=False))(s.variables())['logits']
  np.testing.assert_allclose(logits(restored), logits(trained), rtol=1e-5, atol=1e-5)


def _fashion_mnist_run(dtype: str, steps: int = 40) -> dict[str, float]:
  """A small classifier trained on 512 Fashion-MNIST images, scored on 500 test images."""
  train = data_lib.in_memory_source('fashion_mnist', 'train[:512]')
  test = data_lib.load_split(data_lib.in_memory_source('fashion_mnist', 'test[:500]'))
  model = build.model(Config(dict(name='classifier', num_classes=10, dtype=dtype, encoder=dict(
      stages=((8,), (16,)), norm='group', stem='space_to_depth', pool='flatten',
      input_mean=0.286, input_std=0.353))))
  loader = data_lib.train_loader(train, batch_size=64, seed=0)
  example = data_lib.load_split(data_lib.subset(train, np.arange(64)))
  state = create_state(model, identity(), tx=optax.adam(3e-3), rng=jax.random.PRNGKey(0),
                       example_batch=example)
  step = jax.jit(make_train_step(objectives.classification()))
  for _ in range(steps):
    state, _ = step(state, next(loader))
  metrics = jax.jit(make_eval_step(objectives.classification()))(state, test)
  return {k: float(metrics[k]) for k in ('loss', 'accuracy')}


def test_a_bfloat16_run_on_fashion_mnist_ends_where_the_float32_run_does():
  """40 steps of 64 real images: test loss within 0.05 and accuracy within 2 points."""
  f32, bf16 = _fashion_mnist_run('float32'), _fashion_mnist_run('bfloat16')
  assert f32['accuracy'] > 0.6  # It learned: chance is 0.1.
  assert abs(bf16['loss'] - f32['loss']) < 0.05, (bf16, f32)
  assert abs(bf16['accuracy'] - f32['accuracy']) < 0.02, (bf16, f32)


def _saved_for_backward(dtype: str) -> int:
  """Bytes a GPT's training loss keeps from its forward pass for its backward pass."""
  section = dict(FAMILIES['gpt_clm'][0], dtype=dtype)
  section['transformer'] = dict(section['transformer'], intermediate_size=128, num_layers=2,
                                hidden_size=32, max_position_embeddings=32)
  model = build.model(Config(section))
  rng = np.random.default_rng(0)
  batch = {'input_ids': rng.integers(4, 40, (16, 32)).astype(np.int32)}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))['params']
  objective = objectives.causal_lm()
  apply_fn = lambda v, b, **kw: model.apply(v, b, **kw)
  loss = lambda p: objective(apply_fn, p, batch, jax.random.PRNGKey(1))[0]
  residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
  return sum(r.size * r.dtype.itemsize for r in jax.tree.leaves(residuals))


def test_bfloat16_halves_what_a_transformer_keeps_for_its_backward_pass():
  """Measured 0.63 for this GPT (float32: softmax, LayerNorm statistics, the loss's logits).

  This is the memory that mixed precision saves on an accelerator. XLA:CPU's own
  temporary buffers (`compiled.memory_analysis().temp_size_in_bytes`) do not
  drop: it widens every bfloat16 product to float32 and keeps the widened copies
  (docs/mixed_precision.md has the figures).
  """
  assert _saved_for_backward('bfloat16') < 0.75 * _saved_for_backward('float32')


PRETRAIN = 'configs/fashion_mnist_pretrain.py:tiny'


def test_the_cli_trains_in_bfloat16_keeps_the_dtype_and_resumes_in_float32(tmp_path):
  args = ['pretrain', '--config', PRETRAIN, '--workdir', str(tmp_path), '--no-progress']
  assert cli.main([*args, '--config.model.dtype=bfloat16']) == 0
  saved = checkpoint.read_manifest(tmp_path)['config']['model']
  assert saved['dtype'] == 'bfloat16' and saved['layers'] == 'fast'
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(checkpoint.restore_params(tmp_path)))
  # The float32 parameters continue in another dtype: it is not another model.
  assert cli.main([*args, '--config.train.steps=6']) == 0
  assert checkpoint.read_manifest(tmp_path)['step'] == 6


@pytest.mark.parametrize('override, message', [
    ('model.dtype=int8', "unknown model.dtype 'int8'; choose one of ['bfloat16', 'float16', "
                         "'float32']"),
    ('model.layers=jax', "unknown layers 'jax'; use one of ['fast', 'flax']"),
])
def test_the_cli_refuses_an_unknown_dtype_or_layers_in_one_line(tmp_path, capsys, override,
                                                                message):
  args = ['pretrain', '--config', PRETRAIN, f'--config.{override}', '--workdir', str(tmp_path),
          '--no-progress']
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / 'checkpoints').exists()


def test_every_model_section_of_a_config_file_has_the_switches():
  recipe = config_lib.load('configs/fashion_mnist_recipe.py:tiny')
  for model in (recipe.pretrain.model, recipe.finetune.model,
                config_lib.load('configs/shakespeare_gpt_clm.py:tiny').model):
    assert (model.dtype, model.layers) == ('float32', 'fast')
