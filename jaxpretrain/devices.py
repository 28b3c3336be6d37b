"""Which devices a run uses, and a JAX that fell back to CPU beside an accelerator runtime.

A JAX that does not match the installed TPU or CUDA runtime does not fail: it runs on
CPU, far slower, and says so only in JAX's own log, which the CLI keeps quiet. Runs say it
in their first line instead.
"""

import collections
from collections.abc import Sequence
import importlib.metadata
import logging
import os

import jax

# Installed distribution → (the platform it drives, the pip extra that installs a JAX matching it).
_RUNTIME_PACKAGES = {
    'libtpu': ('tpu', 'jax[tpu]'),
    'libtpu-nightly': ('tpu', 'jax[tpu]'),
    'jax-cuda13-plugin': ('gpu', 'jax[cuda13]'),
    'jax-cuda12-plugin': ('gpu', 'jax[cuda12]'),
}
# Environment variable that announces an accelerator (on Cloud TPU VMs and Colab's TPU and
# GPU runtimes) → the same.
_RUNTIME_ENV = {'TPU_ACCELERATOR_TYPE': ('tpu', 'jax[tpu]'), 'COLAB_TPU_ADDR': ('tpu', 'jax[tpu]'),
                'COLAB_GPU': ('gpu', 'jax[cuda12]')}


def accelerator_runtime() -> tuple[str, str, str] | None:
  """The accelerator this machine is set up for, whatever JAX made of it.

  Returns:
    `(platform, evidence, pip requirement)`, e.g. `('gpu', 'jax-cuda12-plugin 0.7.2',
    'jax[cuda12]')`, from the first installed runtime package or else the first
    environment variable that names one; None on a machine with neither.
  """
  for name, (platform, extra) in _RUNTIME_PACKAGES.items():
    try:
      return platform, f'{name} {importlib.metadata.version(name)}', extra
    except importlib.metadata.PackageNotFoundError:
      continue
  for variable, (platform, extra) in _RUNTIME_ENV.items():
    if os.environ.get(variable, '0') not in ('', '0'):
      return platform, f'${variable}', extra
  return None


def cpu_fallback_warning(backend: str | None = None) -> str | None:
  """One line saying that JAX runs on CPU although an accelerator runtime is there, or None.

  Args:
    backend: the backend JAX uses; `jax.default_backend()` by default.

  Returns:
    The warning, naming the runtime found and the install that fixes it; None when JAX
    uses an accelerator or none is installed.
  """
  runtime = accelerator_runtime()
  if runtime is None or (backend or jax.default_backend()) != 'cpu':
    return None
  platform, evidence, requirement = runtime
  return (f'JAX {jax.__version__} runs on CPU although {evidence} says a {platform.upper()} '
          f'is here: this JAX does not match its runtime; reinstall the JAX that does '
          f'(pip install -U "{requirement}"), or keep the JAX the machine came with')


def describe(devices: Sequence[jax.Device] | None = None) -> str:
  """The devices a run uses, counted by kind, e.g. `8 devices: 8 × TPU v5 lite (backend tpu)`.

  Args:
    devices: the devices; all of JAX's (`jax.devices()`) by default.
  """
  devices = list(jax.devices() if devices is None else devices)
  kinds = collections.Counter(d.device_kind for d in devices)
  counted = ', '.join(f'{n} × {kind}' for kind, n in kinds.items())
  processes = len({d.process_index for d in devices})
  across = f' across {processes} processes' if processes > 1 else ''
  return (f'{len(devices)} device{"s" if len(devices) != 1 else ""}{across}: {counted} '
          f'(backend {devices[0].platform})')


def log_summary() -> None:
  """Logs the devices a run uses, after the CPU fallback warning when there is one."""
  warning = cpu_fallback_warning()
  if warning:
    logging.warning(warning)
  logging.info('JAX %s on %s', jax.__version__, describe())
