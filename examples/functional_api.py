"""The functional API end to end: pre-train an encoder, then fine-tune it with transforms.

  python examples/functional_api.py --pretrain-steps 300 --finetune-steps 200

Runs on every device JAX sees (a CPU, a GPU, a TPU host) with jit over a mesh.
"""

import argparse
import tempfile

import jax
import optax

from jaxpretrain import checkpoint, data, finetune, objectives, parallel
from jaxpretrain.metrics import MeanAccumulator
from jaxpretrain.models import Autoencoder, Classifier, ConvDecoder, ConvEncoder
from jaxpretrain.step import make_eval_step, make_train_step


def train(state, objective, loader, steps):
  mesh = parallel.make_mesh()
  step = parallel.jit(make_train_step(objective), mesh, state)
  state = parallel.place_state(state, mesh)
  for _ in range(steps):
    state, metrics = step(state, parallel.shard_batch(next(loader), mesh))
  print(f'  step {int(state.step)}: loss {float(metrics["loss"]):.4f}')
  return state


def main(pretrain_steps: int, finetune_steps: int, widths: tuple[int, ...], workdir: str):
  # Read whole into memory once: drawing the labelled subset reads every label.
  train_split = data.in_memory_source('fashion_mnist', 'train')
  encoder = ConvEncoder(stages=tuple((w,) for w in widths))

  print('pre-training a denoising autoencoder on unlabelled images')
  autoencoder = Autoencoder(encoder, ConvDecoder(widths=widths[-2::-1]))
  loader = data.train_loader(train_split, batch_size=64, seed=0)
  state = finetune.create_state(autoencoder, finetune.identity(), tx=optax.adamw(2e-3),
                                rng=jax.random.PRNGKey(0), example_batch=next(loader))
  state = train(state, objectives.denoising(), loader, pretrain_steps)
  with checkpoint.Checkpointer(workdir) as ckpt:
    ckpt.save(state, force=True)

  print('fine-tuning a classifier on 600 labels from the pre-trained encoder')
  labelled, _ = data.labelled_subset(train_split, per_class=60, seed=0)
  loader = data.train_loader(data.subset(train_split, labelled), batch_size=64, seed=0)
  transform = finetune.chain(
      finetune.from_pretrained(workdir, select='encoder/.*'),
      finetune.new_head('head/.*'),
      finetune.freeze('encoder/stage0.*'))  # The first stage keeps its pre-trained filters.
  state = finetune.create_state(Classifier(encoder, num_classes=10), transform,
                                tx=optax.adamw(1e-3), rng=jax.random.PRNGKey(1),
                                example_batch=next(loader))
  objective = objectives.with_augmentation(objectives.classification(),
                                           data.augment.standard())
  state = train(state, objective, loader, finetune_steps)

  evaluate = jax.jit(make_eval_step(objectives.classification()))
  accumulator = MeanAccumulator()
  test = data.data_source('fashion_mnist', 'test[:2000]')
  for batch in data.eval_batches(test, batch_size=500):
    accumulator.update(jax.device_get(evaluate(state, batch)))
  result = accumulator.result()
  print(f'test accuracy on {int(result["examples"])} images: {result["accuracy"]:.2%}')
  return result


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--pretrain-steps', type=int, default=300)
  parser.add_argument('--finetune-steps', type=int, default=200)
  parser.add_argument('--widths', type=int, nargs='+', default=[32, 64, 128])
  parser.add_argument('--workdir', default=None)
  args = parser.parse_args()
  main(args.pretrain_steps, args.finetune_steps, tuple(args.widths),
       args.workdir or tempfile.mkdtemp(prefix='jaxpretrain_example_'))
