"""Transfer evaluation of a pre-trained encoder: linear probe, k-NN, few-shot, fine-tuning, LoRA.

  jaxpretrain evaluate --protocol linear_probe --config configs/fashion_mnist_finetune.py \\
      --config.finetune.pretrained=runs/pretrain --workdir runs/transfer

Input is a classifier (fine-tuning) config: its `finetune.pretrained` names the
pre-trained run, and its fine-tuning chain (`from_pretrained`, `new_head`, ...)
builds the classifier exactly as a fine-tuning run starts it. Any image
classifier whose outputs include `features` (`[batch, dim]`) works, whatever its
encoder. Training, validation and test images are the data section's: the
labelled subset (`labelled_per_class`) and its held-out validation images
(`validation_per_class`, else `validation_split`), and the test split
(`split`, 'test' by default). Every protocol chooses its hyper-parameter on
validation accuracy alone and only then scores the test split, reporting
test `accuracy` and `macro_f1`, `validation_accuracy` and what it `chose`;
`run` writes the result to `workdir/transfer_<protocol>.json`.

Protocols on frozen features (`linear_probe`, `knn`, `few_shot`) run the
encoder once, in inference mode and without augmentation, over the three
splits, and cache the features in memory and as `.npy` files under
`workdir/features/` (reused while the parameters, model, data and splits are
the same; `cached_features`). The encoder never runs while they fit. A config
without `finetune.pretrained` is a valid baseline (a randomly initialised
encoder); the result then says `pretrained: null`.

- `linear_probe`: multinomial logistic regression on standardised features
  (train-set mean and standard deviation), fitted full-batch by L-BFGS in JAX
  for every L2 strength of a grid at once (`jax.vmap`); the strength with the
  best validation accuracy (lower validation loss breaks ties) is kept.
- `knn`: weighted k-nearest neighbours by cosine similarity (Wu et al., 2018;
  DINO): each of the k most similar labelled training images votes for its
  class with weight `exp(similarity / T)`, T = 0.07. k is fixed (20 by
  default); given several k, the one with the best validation accuracy is
  chosen and the result says so (`chosen.k_by`).
- `few_shot`: for each n in `shots`, n labelled training images per class are
  drawn (one draw per seed), and a ridge regression to {-1, 1} one-hot targets
  is solved in closed form on the n-shot features (standardised by their own
  statistics, with a large constant bias feature), as big_vision's few-shot
  evaluator does. The ridge strength is chosen per n on the validation
  accuracy averaged over draws; the test metrics are the mean and standard
  deviation over draws. The top-level metrics are those of the largest n.
- `finetune`: the whole classifier trained by `loop.train` with the config as
  given, in `workdir/finetune`; the epoch is the checkpoint with the best
  `checkpoint.best_metric` on validation (the last one if the config has
  none), then scored on the test split.
- `lora`: the same with LoRA adapters of `finetune.lora.rank` (the config's,
  else 8, or `rank`) on the encoder, whose weights stay frozen; only the
  adapters and the new head train (`workdir/lora_rank<r>`).
"""

from collections.abc import Callable, Sequence
import functools
import hashlib
import json
import logging
import time
from typing import Any, NamedTuple

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from jaxpretrain import build, loop, paths
from jaxpretrain import config as config_lib
from jaxpretrain import data as data_lib
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.metrics import accuracy, macro_f1
from jaxpretrain.step import apply_model

Config = ml_collections.ConfigDict

L2_GRID = tuple(10.0 ** e for e in range(-6, 1))  # Logistic-regression L2 strengths.
RIDGE_GRID = tuple(2.0 ** e for e in range(-10, 20, 2))  # Few-shot ridge strengths.
KNN_K = (20,)
KNN_TEMPERATURE = 0.07
FEW_SHOTS = (1, 5, 10)
FEW_SHOT_SEEDS = 5
LORA_RANK = 8
# big_vision's constant bias feature: large, so that the ridge penalty barely touches the bias.
_BIAS = 100.0
_ROLES = ('train', 'validation', 'test')
# Full float32 matmuls: accelerators' default bfloat16 passes would blur the solvers' optima.
_HIGHEST = jax.lax.Precision.HIGHEST


class SplitFeatures(NamedTuple):
  """An encoder's features of one split's examples, with their labels."""
  features: np.ndarray  # float32 [examples, dim]
  labels: np.ndarray    # int32 [examples]


def _pretrained(config: Config) -> str | None:
  return config.get('finetune', {}).get('pretrained') or None


def _has_validation(cfg: Config) -> bool:
  """Whether `loop.run_splits` gives a validation split for this data section."""
  held_out = cfg.get('labelled_per_class', 0) and cfg.get('validation_per_class', 0)
  return bool(held_out or cfg.get('validation_split'))


def _check(config: Config) -> None:
  if config.objective.name != 'classification':
    raise ConfigError(f'transfer evaluation needs a classifier config (objective '
                      f"'classification'), not objective {config.objective.name!r}; pass a "
                      'fine-tuning config such as configs/fashion_mnist_finetune.py')
  if not _has_validation(config.data):
    raise ConfigError('transfer evaluation chooses its hyper-parameter on validation images: '
                      'set data.validation_per_class (held out of the labelled subset) or '
                      'data.validation_split')


# Features: computed once, cached in memory and on disk.

def _fingerprint(config: Config, state: Any, splits: dict[str, str]) -> str:
  """What the features depend on: every model variable, the model and data sections, splits."""
  h = hashlib.sha256(json.dumps({'model': config.model.to_dict(), 'data': config.data.to_dict(),
                                 'splits': splits}, sort_keys=True, default=str).encode())
  for path, leaf in sorted(tree_lib.flatten(jax.device_get(state.variables())).items()):
    h.update(path.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _check_features(config: Config, state: Any, example: dict) -> None:
  outputs = jax.eval_shape(apply_model, state, example)
  if 'features' not in outputs:
    raise ConfigError(
        f'model {config.model.name!r} returns {sorted(outputs)} and no features; the transfer '
        "protocols read an encoder's pooled features: return them as outputs['features'] "
        '([batch, dim]) from the model, as models.Classifier does')
  if len(outputs['features'].shape) != 2:
    raise ConfigError(f"model {config.model.name!r} returns features of shape "
                      f"{outputs['features'].shape}; the transfer protocols need pooled "
                      '[batch, dim] features (e.g. the encoder with pool="mean" or "flatten")')


def _extract(engine: Any, placed: Any, source: data_lib.Source, *, batch_size: int,
             label_key: str, progress: bool, desc: str) -> SplitFeatures:
  batches = tqdm.tqdm(data_lib.eval_batches(source, batch_size=batch_size),
                      total=-(-len(source) // batch_size), disable=not progress, desc=desc,
                      dynamic_ncols=True)
  features, labels = loop.split_outputs(engine, placed, batches, output_key='features',
                                        label_key=label_key)
  return SplitFeatures(features.astype(np.float32), labels.astype(np.int32))


def _save(path: epath.Path, array: np.ndarray) -> None:
  with path.open('wb') as f:
    np.save(f, array)


def _load(path: epath.Path) -> np.ndarray:
  with path.open('rb') as f:
    return np.load(f)


def cached_features(config: Config, workdir: paths.PathLike, *, split: str = 'test',
                    progress: bool = False) -> dict[str, SplitFeatures]:
  """The frozen encoder's features of the training, validation and test images.

  The encoder is the config's classifier at the start of fine-tuning (its
  fine-tuning chain applied: pre-trained weights, new head), run in inference
  mode without augmentation. The features are saved in `workdir/features/`
  and read back on a later call while the model's variables, the model and
  data sections and the splits are unchanged.

  Args:
    config: a classifier config.
    workdir: where `features/` goes.
    split: the test split.
    progress: show a progress bar while the encoder runs.

  Returns:
    'train', 'validation' and 'test' → `SplitFeatures`, in each split's order.
  """
  _check(config)
  workdir = paths.as_path(workdir)
  config, tokenizer = loop.with_tokenizer(config, workdir)
  train_src, val_src = loop.run_splits(config, tokenizer)
  test_src = loop.split_source(config.data, split, tokenizer)
  sources = dict(zip(_ROLES, (train_src, val_src, test_src)))
  batch_size = config.data.eval_batch_size
  example = data_lib.load_split(data_lib.subset(train_src, np.arange(batch_size) % len(train_src)))
  state = loop.initial_state(config, config.get('finetune'), 1, example)
  _check_features(config, state, example)
  cache = workdir / 'features'
  fingerprint = _fingerprint(config, state, {'train': config.data.train_split,
                                             'validation': config.data.get('validation_split'),
                                             'test': split})
  manifest = cache / 'manifest.json'
  if manifest.is_file() and json.loads(manifest.read_text()).get('fingerprint') == fingerprint:
    logging.info('reading cached features from %s', cache)
    return {role: SplitFeatures(_load(cache / f'{role}_features.npy'),
                                _load(cache / f'{role}_labels.npy')) for role in _ROLES}
  objective = build.objective(config.objective, tokenizer=tokenizer,
                              axis_name=loop.axis_name(config))
  engine = loop.make_engine(config.parallel.mode, objective, objective, state,
                            sharding=loop.sharding_options(config))
  placed = engine.place_state(state)
  label_key = config.objective.get('label_key', 'label')
  out = {role: _extract(engine, placed, source, batch_size=batch_size, label_key=label_key,
                        progress=progress, desc=f'features {role}')
         for role, source in sources.items()}
  if jax.process_index() == 0:
    cache.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)  # Until the new arrays are all written, none is vouched for.
    for role, split_features in out.items():
      _save(cache / f'{role}_features.npy', split_features.features)
      _save(cache / f'{role}_labels.npy', split_features.labels)
    # Written last: a manifest vouches only for complete arrays.
    manifest.write_text(json.dumps({'fingerprint': fingerprint, 'split': split,
                                    'pretrained': _pretrained(config),
                                    'examples': {r: len(f.labels) for r, f in out.items()}}))
  return out


def _num_classes(config: Config, features: dict[str, SplitFeatures]) -> int:
  seen = 1 + max(int(f.labels.max()) for f in features.values())
  return max(int(config.model.get('num_classes', 0) or 0), seen)


def _standardiser(x_NxD: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  """Standardisation by `x`'s statistics; a constant feature is only centred."""
  mean, std = x_NxD.mean(0), x_NxD.std(0)
  std = np.where(std > 1e-6, std, 1.0)
  return lambda x: ((x - mean) / std).astype(np.float32)


def _scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  return {'accuracy': accuracy(logits=logits, labels=labels),
          'macro_f1': macro_f1(logits=logits, labels=labels)}


def _best(accuracies: Sequence[float], losses: Sequence[float]) -> int:
  """The index of the highest accuracy; lower loss breaks ties."""
  return max(range(len(accuracies)), key=lambda i: (accuracies[i], -losses[i]))


# Linear probe.

class LogisticRegression(NamedTuple):
  """Weights of multinomial logistic regressions, one per L2 strength."""
  w_LxDxC: jax.Array
  b_LxC: jax.Array


def _logistic_loss(params: tuple[jax.Array, jax.Array], x_NxD: jax.Array, labels_N: jax.Array,
                   l2: jax.Array) -> jax.Array:
  w_DxC, b_C = params
  logits = jnp.matmul(x_NxD, w_DxC, precision=_HIGHEST) + b_C
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels_N).mean()
  return nll + 0.5 * l2 * jnp.sum(w_DxC ** 2)  # The bias is not penalised.


def fit_logistic(x_NxD: jax.typing.ArrayLike, labels_N: jax.typing.ArrayLike,
                 l2s: Sequence[float], *, num_classes: int, max_iter: int = 500,
                 tol: float = 1e-5) -> LogisticRegression:
  """Fits `mean cross-entropy + l2 / 2 * |w|^2` full-batch by L-BFGS, for each of `l2s`.

  All strengths are fitted at once (vmapped). Each stops when its gradient
  norm falls below `tol` or after `max_iter` iterations.
  """
  return _fit_logistic(jnp.asarray(x_NxD, jnp.float32), jnp.asarray(labels_N, jnp.int32),
                       jnp.asarray(l2s, jnp.float32), num_classes=num_classes,
                       max_iter=max_iter, tol=tol)


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_iter', 'tol'))
def _fit_logistic(x_NxD, labels_N, l2_L, *, num_classes, max_iter, tol):
  solver = optax.lbfgs()

  def fit(l2):
    loss = lambda p: _logistic_loss(p, x_NxD, labels_N, l2)
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry):
      params, state, i = carry
      value, grad = value_and_grad(params, state=state)
      updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
      return optax.apply_updates(params, updates), state, i + 1

    def running(carry):
      _, state, i = carry
      grad_norm = optax.tree.norm(optax.tree.get(state, 'grad'))
      return (i == 0) | ((i < max_iter) & (grad_norm >= tol))

    params = (jnp.zeros((x_NxD.shape[1], num_classes)), jnp.zeros((num_classes,)))
    params, _, _ = jax.lax.while_loop(running, body, (params, solver.init(params), 0))
    return params

  w, b = jax.vmap(fit)(l2_L)
  return LogisticRegression(w, b)


def linear_probe(config: Config, workdir: epath.Path, *, split: str = 'test',
                 progress: bool = False, l2_grid: Sequence[float] = L2_GRID) -> dict[str, Any]:
  """Logistic regression on the frozen encoder's cached features; L2 chosen on validation."""
  feats = cached_features(config, workdir, split=split, progress=progress)
  standardise = _standardiser(feats['train'].features)
  x = {role: standardise(f.features) for role, f in feats.items()}
  model = fit_logistic(x['train'], feats['train'].labels, l2_grid,
                       num_classes=_num_classes(config, feats))
  w, b = np.asarray(model.w_LxDxC), np.asarray(model.b_LxC)
  val = [x['validation'] @ w[i] + b[i] for i in range(len(l2_grid))]
  val_labels = feats['validation'].labels
  accs = [accuracy(logits=v, labels=val_labels) for v in val]
  losses = [float(optax.softmax_cross_entropy_with_integer_labels(v, val_labels).mean())
            for v in val]
  i = _best(accs, losses)
  return {**_scores(x['test'] @ w[i] + b[i], feats['test'].labels),
          'examples': len(feats['test'].labels), 'validation_accuracy': accs[i],
          'chosen': {'l2': float(l2_grid[i])},
          'validation_grid': {f'l2={l2:g}': a for l2, a in zip(l2_grid, accs)},
          'train_examples': len(feats['train'].labels),
          'feature_dim': int(feats['train'].features.shape[1])}


# k nearest neighbours.

@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _knn_chunk(train_TxD, train_labels_T, query_QxD, temperature, *, k, num_classes):
  sim_QxT = jnp.matmul(query_QxD, train_TxD.T, precision=_HIGHEST)
  top_sim_QxK, top_idx_QxK = jax.lax.top_k(sim_QxT, k)
  weight_QxK = jnp.exp(top_sim_QxK / temperature)
  votes_QxKxC = jax.nn.one_hot(train_labels_T[top_idx_QxK], num_classes)
  return jnp.einsum('qk,qkc->qc', weight_QxK, votes_QxKxC)


def _unit(x_NxD: np.ndarray) -> np.ndarray:
  return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), 1e-12)


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray,
               *, k: int, num_classes: int, temperature: float = KNN_TEMPERATURE,
               chunk: int = 1024) -> np.ndarray:
  """Class scores of temperature-weighted cosine k-NN votes (Wu et al., 2018; DINO).

  Args:
    train_features: `[T, D]` features of the labelled images.
    train_labels: `[T]` their labels.
    query_features: `[Q, D]` features to classify.
    k: neighbours that vote, at most T.
    num_classes: number of classes C.
    temperature: votes weigh `exp(cosine similarity / temperature)`.
    chunk: queries per step (bounds the `[chunk, T]` similarity matrix).

  Returns:
    `[Q, C]` summed vote weights; the arg-max is the prediction.
  """
  if not 1 <= k <= len(train_labels):
    raise ConfigError(f'k={k} nearest neighbours of {len(train_labels)} labelled training '
                      'images; choose k between 1 and the number of training images')
  train, query = jnp.asarray(_unit(train_features)), _unit(query_features)
  labels = jnp.asarray(train_labels, jnp.int32)
  chunk = min(chunk, len(query))
  out = []
  for start in range(0, len(query), chunk):
    part = query[start:start + chunk]
    padded = np.pad(part, ((0, chunk - len(part)), (0, 0)))  # One compiled shape for all.
    scores = _knn_chunk(train, labels, jnp.asarray(padded), temperature, k=k,
                        num_classes=num_classes)
    out.append(np.asarray(scores)[:len(part)])
  return np.concatenate(out)


def knn(config: Config, workdir: epath.Path, *, split: str = 'test', progress: bool = False,
        k: Sequence[int] = KNN_K, temperature: float = KNN_TEMPERATURE) -> dict[str, Any]:
  """Weighted cosine k-NN on the cached features; k fixed, or chosen on validation."""
  feats = cached_features(config, workdir, split=split, progress=progress)
  ks = sorted(set(int(v) for v in k))
  classes = _num_classes(config, feats)
  train = feats['train']
  score = lambda role, kk: knn_scores(train.features, train.labels, feats[role].features, k=kk,
                                      num_classes=classes, temperature=temperature)
  val = {kk: score('validation', kk) for kk in ks}
  accs = [accuracy(logits=val[kk], labels=feats['validation'].labels) for kk in ks]
  i = _best(accs, [0.0] * len(ks))  # Equal accuracies: the smallest k.
  chosen = ks[i]
  return {**_scores(score('test', chosen), feats['test'].labels),
          'examples': len(feats['test'].labels), 'validation_accuracy': accs[i],
          'chosen': {'k': chosen, 'k_by': 'validation accuracy' if len(ks) > 1 else 'fixed',
                     'temperature': temperature},
          'validation_grid': {f'k={kk}': a for kk, a in zip(ks, accs)},
          'train_examples': len(train.labels), 'feature_dim': int(train.features.shape[1])}


# Few-shot ridge regression.

class _RidgeCache(NamedTuple):
  eigs_E: jax.Array
  lhs_DxE: jax.Array
  rhs_ExC: jax.Array


def _ridge_cache(x_NxD: jax.Array, y_NxC: jax.Array) -> _RidgeCache:
  """The eigendecomposition that solves the ridge problem for any strength at once.

  `w = (x'x + l2 I)^-1 x'y`; with `x'x = q diag(e) q'` this is
  `q diag(1 / (e + l2)) q'x'y`. With fewer points than dimensions, the kernel
  form `x'(xx' + l2 I)^-1 y` decomposes the smaller `xx'` instead.
  """
  n, d = x_NxD.shape
  if n >= d:
    eigs, q = jnp.linalg.eigh(jnp.matmul(x_NxD.T, x_NxD, precision=_HIGHEST))
    return _RidgeCache(eigs, q, jnp.matmul(q.T, jnp.matmul(x_NxD.T, y_NxC, precision=_HIGHEST),
                                           precision=_HIGHEST))
  eigs, q = jnp.linalg.eigh(jnp.matmul(x_NxD, x_NxD.T, precision=_HIGHEST))
  return _RidgeCache(eigs, jnp.matmul(x_NxD.T, q, precision=_HIGHEST),
                     jnp.matmul(q.T, y_NxC, precision=_HIGHEST))


def _ridge_weights(cache: _RidgeCache, l2: jax.Array) -> jax.Array:
  return jnp.matmul(cache.lhs_DxE / (cache.eigs_E + l2), cache.rhs_ExC,
                    precision=_HIGHEST)


def ridge_fit(x_NxD: jax.typing.ArrayLike, y_NxC: jax.typing.ArrayLike,
              l2: float) -> jax.Array:
  """The minimiser `w` (`[D, C]`) of `|x w - y|^2 + l2 |w|^2`, in closed form."""
  return _ridge_fit(jnp.asarray(x_NxD, jnp.float32), jnp.asarray(y_NxC, jnp.float32),
                    jnp.float32(l2))


@jax.jit
def _ridge_fit(x_NxD, y_NxC, l2):
  return _ridge_weights(_ridge_cache(x_NxD, y_NxC), l2)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _few_shot_scores(x_NxD, labels_N, l2_L, x_val_VxD, x_test_SxD, *, num_classes):
  """Validation and test scores `[L, V, C]`, `[L, S, C]` of the ridge fits for every l2."""
  mean = x_NxD.mean(0)
  std = x_NxD.std(0) + 1e-5  # As big_vision: a constant feature of the n-shot set is kept at 0.
  prep = lambda x: jnp.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=_BIAS)
  y = 2.0 * jax.nn.one_hot(labels_N, num_classes) - 1.0
  cache = _ridge_cache(prep(x_NxD), y)
  w_LxDxC = jax.vmap(lambda l2: _ridge_weights(cache, l2))(l2_L)
  return (jnp.matmul(prep(x_val_VxD), w_LxDxC, precision=_HIGHEST),
          jnp.matmul(prep(x_test_SxD), w_LxDxC, precision=_HIGHEST))


def _draw(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
  """`shots` indices of each class, drawn without replacement by `seed`."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < shots:
      raise ConfigError(f'{shots}-shot needs {shots} training images of class {c}, which has '
                        f'{len(members)}; lower the shots or raise data.labelled_per_class')
    picked.append(rng.choice(members, shots, replace=False))
  return np.sort(np.concatenate(picked))


def few_shot(config: Config, workdir: epath.Path, *, split: str = 'test',
             progress: bool = False, shots: Sequence[int] = FEW_SHOTS,
             seeds: int = FEW_SHOT_SEEDS, l2_grid: Sequence[float] = RIDGE_GRID
             ) -> dict[str, Any]:
  """n-shot ridge classifiers on the cached features, averaged over `seeds` draws."""
  if seeds < 1:
    raise ConfigError(f'few_shot needs at least one seed (draw), got {seeds}')
  feats = cached_features(config, workdir, split=split, progress=progress)
  classes = _num_classes(config, feats)
  train, val, test = feats['train'], feats['validation'], feats['test']
  per_shot = {}
  for n in sorted(set(int(s) for s in shots)):
    val_acc, val_loss, test_scores = [], [], []
    for seed in range(seeds):
      idx = _draw(train.labels, n, seed, classes)
      v_LxVxC, t_LxSxC = jax.device_get(_few_shot_scores(
          train.features[idx], train.labels[idx], jnp.asarray(l2_grid, jnp.float32),
          val.features, test.features, num_classes=classes))
      target = 2.0 * np.eye(classes)[val.labels] - 1.0
      val_acc.append([accuracy(logits=v, labels=val.labels) for v in v_LxVxC])
      val_loss.append([float(np.mean((v - target) ** 2)) for v in v_LxVxC])
      test_scores.append(t_LxSxC)
    i = _best(np.mean(val_acc, 0).tolist(), np.mean(val_loss, 0).tolist())
    draws = [_scores(t[i], test.labels) for t in test_scores]
    sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    per_shot[n] = {name: float(np.mean([d[name] for d in draws])) for name in draws[0]}
    per_shot[n] |= {f'{name}_sd': sd([d[name] for d in draws]) for name in draws[0]}
    per_shot[n] |= {'validation_accuracy': float(np.mean(val_acc, 0)[i]),
                    'l2': float(l2_grid[i])}
  top = max(per_shot)
  headline = per_shot[top]
  return {'accuracy': headline['accuracy'], 'macro_f1': headline['macro_f1'],
          'accuracy_sd': headline['accuracy_sd'], 'macro_f1_sd': headline['macro_f1_sd'],
          'examples': len(test.labels), 'validation_accuracy': headline['validation_accuracy'],
          'chosen': {'shots': top, 'l2': headline['l2'], 'l2_by': 'validation accuracy'},
          'seeds': seeds, 'shots': {str(n): r for n, r in per_shot.items()},
          'feature_dim': int(train.features.shape[1])}


# Fine-tuning.

def _train_and_score(config: Config, run_dir: epath.Path, split: str,
                     progress: bool) -> dict[str, Any]:
  summary = loop.train(config, run_dir, kind='finetune', progress=progress)
  test = loop.evaluate(config, run_dir, split=split, step='best')
  metric = config.checkpoint.get('best_metric') or None
  best = summary.get('best_validation') or {}
  return {'accuracy': test['accuracy'], 'macro_f1': test['macro_f1'],
          'examples': int(test['examples']), 'validation_accuracy': best.get('accuracy'),
          'chosen': {'epoch': summary['best_step'] / summary['steps_per_epoch'],
                     'step': summary['best_step'],
                     'by': f'validation {metric}' if metric else 'last step (no '
                           'checkpoint.best_metric)'},
          'trainable_params': summary['trainable_params'],
          'frozen_params': summary['frozen_params'], 'run': str(run_dir)}


def finetune(config: Config, workdir: epath.Path, *, split: str = 'test',
             progress: bool = False) -> dict[str, Any]:
  """The classifier fine-tuned as the config says (`workdir/finetune`), scored at its best epoch."""
  return _train_and_score(config, workdir / 'finetune', split, progress)


def lora(config: Config, workdir: epath.Path, *, split: str = 'test', progress: bool = False,
         rank: int | None = None) -> dict[str, Any]:
  """LoRA adapters (and the head) fine-tuned on the frozen encoder, in `workdir/lora_rank<r>`."""
  rank = rank or config.finetune.lora.get('rank', 0) or LORA_RANK
  config = config_lib.override(config, [f'finetune.lora.rank={int(rank)}'])
  return {**_train_and_score(config, workdir / f'lora_rank{rank}', split, progress),
          'lora_rank': int(rank)}


PROTOCOLS: dict[str, Callable[..., dict[str, Any]]] = {
    'linear_probe': linear_probe,
    'knn': knn,
    'few_shot': few_shot,
    'finetune': finetune,
    'lora': lora,
}


def run(config: Config, workdir: paths.PathLike, protocol: str, *, split: str = 'test',
        progress: bool = True, **options: Any) -> dict[str, Any]:
  """Evaluates the config's (pre-trained) encoder by `protocol`; writes `transfer_<protocol>.json`.

  Args:
    config: a classifier config; `finetune.pretrained` names the pre-trained run
      (empty: a randomly initialised encoder, as a baseline).
    workdir: where features, trained runs and the result go.
    protocol: one of `PROTOCOLS`.
    split: the test split, scored once the hyper-parameter is chosen.
    progress: show progress bars.
    **options: the protocol's own arguments (e.g. `k` for knn, `shots` and
      `seeds` for few_shot, `rank` for lora).

  Returns:
    Test `accuracy` and `macro_f1`, `validation_accuracy`, the `chosen`
    hyper-parameter, `pretrained` and the protocol's details.
  """
  if protocol not in PROTOCOLS:
    raise ConfigError(f'unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}')
  _check(config)
  start = time.time()
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  result = PROTOCOLS[protocol](config, workdir, split=split, progress=progress, **options)
  pretrained = _pretrained(config)
  result = {'protocol': protocol, 'pretrained': pretrained, 'split': split, **result,
            'wall_time_s': time.time() - start}
  if pretrained is None:
    result['note'] = ('no finetune.pretrained: the encoder starts from random initialisation '
                      '(a baseline)')
  (workdir / f'transfer_{protocol}.json').write_text(json.dumps(result, indent=2, default=str)
                                                     + '\n')
  return result
