"""Two processes on 127.0.0.1 form one global mesh and match a single 4-device process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(num_processes, process_id, port, local_devices):
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  env.pop('XLA_FLAGS', None)
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.multihost_worker', str(num_processes), str(process_id),
       str(port), str(local_devices)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _result(proc):
  try:
    out, err = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])['losses']


def test_two_processes_match_one_process_with_four_devices():
  port = _free_port()
  workers = [_launch(2, i, port, 2) for i in range(2)]
  reference = _launch(1, 0, 0, 4)
  try:
    results = [_result(w) for w in workers]
    expected = _result(reference)
  finally:
    for p in [*workers, reference]:
      if p.poll() is None:
        p.kill()
  assert len(expected) == 3 and expected[-1] < expected[0]
  for losses in results:
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
