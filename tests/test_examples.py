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


def test_four_ways_example_writes_its_table(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['finetune_four_ways.py', '--config',
                                    'configs/fashion_mnist_four_ways.py:tiny',
                                    '--workdir', str(tmp_path), '--no-progress'])
  runpy.run_path('examples/finetune_four_ways.py', run_name='__main__')
  lines = (tmp_path / 'four_ways.md').read_text().splitlines()
  header = lines.index('| way | trainable parameters | test accuracy, 1% labels |')
  rows = [line.strip('| ').split(' | ') for line in lines[header + 2:] if line]
  assert [r[0] for r in rows] == ['linear probe', 'full fine-tune', 'LoRA, rank 8 (+ new head)',
                                  'full, layer-wise LR decay 0.5', 'from scratch (baseline)']
  params = {r[0]: int(r[1].replace(',', '')) for r in rows}
  assert params['linear probe'] < params['full fine-tune'] == params['from scratch (baseline)']
  assert all(0 <= float(r[2].rstrip('%')) <= 100 for r in rows)
  out = capsys.readouterr().out
  assert all(line in out for line in lines[header:])
