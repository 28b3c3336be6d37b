"""One process of the multi-host test: 3 steps on a global mesh, replicated then with FSDP.

Usage: python -m tests.multihost_worker NUM_PROCESSES PROCESS_ID PORT LOCAL_DEVICES CKPT_DIR
With NUM_PROCESSES=1 it runs alone (no coordinator), as the reference. The FSDP
run's final state is saved in CKPT_DIR (by every process together). Prints one
JSON line: the loss of each step of each run.
"""

import json
import sys

import jax

num_processes, process_id, port, local_devices = map(int, sys.argv[1:5])
ckpt_dir = sys.argv[5]
jax.config.update('jax_num_cpu_devices', local_devices)
jax.config.update('jax_cpu_collectives_implementation', 'gloo')

from jaxpretrain import parallel  # pylint: disable=g-import-not-at-top

if num_processes > 1:
  parallel.initialize(f'127.0.0.1:{port}', num_processes, process_id)

import optax  # pylint: disable=g-import-not-at-top

from jaxpretrain import checkpoint  # pylint: disable=g-import-not-at-top
from jaxpretrain.finetune import create_state, identity  # pylint: disable=g-import-not-at-top
from jaxpretrain.objectives import classification  # pylint: disable=g-import-not-at-top
from jaxpretrain.step import make_train_step  # pylint: disable=g-import-not-at-top
from tests.helpers import image_batch, tiny_classifier  # pylint: disable=g-import-not-at-top

GLOBAL_BATCH = 16
# Every leaf with a dimension divisible by the 4 devices is split over them.
FSDP = dict(fsdp=True, fsdp_min_bytes=0)
batches = [image_batch(GLOBAL_BATCH, seed=s) for s in range(3)]
mesh = parallel.make_mesh()
assert mesh.size == 4, mesh
per_process = GLOBAL_BATCH // num_processes


def init():
  return create_state(tiny_classifier(), identity(), tx=optax.adamw(1e-2),
                      rng=jax.random.PRNGKey(0), example_batch=batches[0])


def train(state, **sharding):
  step = parallel.jit(make_train_step(classification()), mesh, state, **sharding)
  losses = []
  for batch in batches:
    local = {k: v[process_id * per_process:(process_id + 1) * per_process]
             for k, v in batch.items()}
    state, metrics = step(state, parallel.shard_batch(local, mesh))
    losses.append(float(metrics['loss']))
  return state, losses


_, replicated = train(parallel.place_state(init(), mesh))
state, fsdp = train(parallel.init_state(init, mesh, **FSDP), **FSDP)
kernel = state.params['head']['dense']['kernel']
assert kernel.sharding.spec == parallel.fsdp_spec(kernel.shape, 4), kernel.sharding
with checkpoint.Checkpointer(ckpt_dir, save_every=1, async_save=False) as ckpt:
  ckpt.save(state, force=True)
print(json.dumps({'process': process_id, 'replicated': replicated, 'fsdp': fsdp}))
