"""The examples run as published (with few steps)."""

import runpy
import sys


def test_functional_api_example_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['functional_api.py', '--pretrain-steps', '2',
                                    '--finetune-steps', '2', '--widths', '4', '8',
                                    '--workdir', str(tmp_path)])
  runpy.run_path('examples/functional_api.py', run_name='__main__')
  out = capsys.readouterr().out
  assert 'test accuracy on 2000 images' in out
