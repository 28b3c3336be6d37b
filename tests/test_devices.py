"""The devices line every run logs, and the warning for a JAX that fell back to CPU."""

import importlib.metadata

import jax
import pytest

from jaxpretrain import cli, devices


def _installed(monkeypatch, **versions):
  """Makes `importlib.metadata` see exactly these distributions (name → version)."""
  def version(name):
    if name not in versions:
      raise importlib.metadata.PackageNotFoundError(name)
    return versions[name]
  monkeypatch.setattr(importlib.metadata, 'version', version)
  for variable in ('TPU_ACCELERATOR_TYPE', 'COLAB_TPU_ADDR', 'COLAB_GPU'):
    monkeypatch.delenv(variable, raising=False)


def test_no_runtime_no_warning(monkeypatch):
  _installed(monkeypatch)
  assert devices.accelerator_runtime() is None
  assert devices.cpu_fallback_warning() is None


@pytest.mark.parametrize('package, requirement', [('libtpu', 'jax[tpu]'),
                                                  ('jax-cuda12-plugin', 'jax[cuda12]'),
                                                  ('jax-cuda13-plugin', 'jax[cuda13]')])
def test_runtime_beside_a_cpu_jax_names_the_fix(monkeypatch, package, requirement):
  _installed(monkeypatch, **{package: '0.7.2'})
  warning = devices.cpu_fallback_warning()  # the test's JAX runs on CPU
  assert warning is not None and '\n' not in warning
  assert f'{package} 0.7.2' in warning and f'pip install -U "{requirement}"' in warning
  assert devices.cpu_fallback_warning(backend='tpu' if 'tpu' in package else 'gpu') is None


@pytest.mark.parametrize('variable, value, platform', [('COLAB_GPU', '1', 'GPU'),
                                                       ('TPU_ACCELERATOR_TYPE', 'v5e-8', 'TPU')])
def test_environment_announcing_an_accelerator(monkeypatch, variable, value, platform):
  _installed(monkeypatch)
  monkeypatch.setenv(variable, value)
  assert f'${variable} says a {platform} is here' in devices.cpu_fallback_warning('cpu')
  monkeypatch.setenv(variable, '0')
  assert devices.cpu_fallback_warning('cpu') is None


def test_describe_counts_devices_by_kind():
  assert devices.describe() == '8 devices: 8 × cpu (backend cpu)'  # conftest's 8 fake devices
  assert devices.describe(jax.devices()[:1]) == '1 device: 1 × cpu (backend cpu)'


def test_cli_logs_the_devices_and_the_fallback_once(tmp_path, monkeypatch, caplog):
  _installed(monkeypatch, libtpu='0.0.21')
  with caplog.at_level('INFO'):
    # Evaluating where no run saved a checkpoint fails fast, after the run's first lines.
    assert cli.main(['evaluate', '--config', 'configs/fashion_mnist_finetune.py:tiny',
                     '--workdir', str(tmp_path)]) == 2
  lines = caplog.text.splitlines()
  assert sum('8 devices: 8 × cpu' in line for line in lines) == 1
  warnings = [r.message for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and 'libtpu 0.0.21 says a TPU is here' in warnings[0]
