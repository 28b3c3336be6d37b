"""Two processes on 127.0.0.1 form one global mesh and match a single 4-device process.

Both run plain data parallelism and FSDP; the FSDP checkpoint they save together
holds what the single process saves.
"""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from jaxpretrain import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(num_processes, process_id, port, local_devices, ckpt_dir):
  # Inherits conftest's XLA_FLAGS: the workers compile at its fast settings too.
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.multihost_worker', str(num_processes), str(process_id),
       str(port), str(local_devices), str(ckpt_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _result(proc):
  try:
    out, err = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  port = _free_port()
  workers = [_launch(2, i, port, 2, tmp_path / 'two') for i in range(2)]
  reference = _launch(1, 0, 0, 4, tmp_path / 'one')
  try:
    results = [_result(w) for w in workers]
    expected = _result(reference)
  finally:
    for p in [*workers, reference]:
      if p.poll() is None:
        p.kill()
  for run in ('replicated', 'fsdp'):
    assert len(expected[run]) == 3 and expected[run][-1] < expected[run][0]
    np.testing.assert_allclose(expected[run], expected['replicated'], rtol=1e-5, atol=1e-6)
    for result in results:
      np.testing.assert_allclose(result[run], expected[run], rtol=1e-5, atol=1e-6)
  two, one = (checkpoint.restore_params(tmp_path / d) for d in ('two', 'one'))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), two, one)
