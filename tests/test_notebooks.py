"""The example notebooks run headless, top to bottom, on the CPU with small parameters.

Each runs in a fresh IPython kernel of this interpreter (ipykernel's `python3`), importing
this checkout's `jaxpretrain`, with parameters injected after the notebook's `parameters`
cell as papermill injects them; a last cell reports the notebook's `results` (its scores),
the kernel's interpreter and devices.
"""

import ast
import json
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES = 2  # More than one, so the mesh really splits every batch.
_REPORT = '''
import json, sys
import jax, jaxpretrain
print(json.dumps({'executable': sys.executable, 'jaxpretrain': jaxpretrain.__file__,
                  'devices': jax.device_count(), 'results': results}))
'''


def run_notebook(name: str, parameters: dict, workdir: pathlib.Path) -> dict:
  """Executes `examples/<name>` with `parameters`; returns its report (see `_REPORT`)."""
  nb = nbformat.read(ROOT / 'examples' / name, as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', ())]
  assert len(tagged) == 1, f'{name} needs exactly one cell tagged parameters'
  unknown = set(parameters) - _assigned(nb.cells[tagged[0]].source)
  assert not unknown, f'{name} has no parameters {sorted(unknown)}'
  injected = nbformat.v4.new_code_cell('\n'.join(f'{k} = {v!r}' for k, v in parameters.items()),
                                       metadata={'tags': ['injected-parameters']})
  nb.cells.insert(tagged[0] + 1, injected)
  nb.cells.append(nbformat.v4.new_code_cell(_REPORT))
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': str(DEVICES),
         'PYTHONPATH': os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': str(workdir)}}).execute(env=env)
  outputs = nb.cells[-1].outputs
  return json.loads(''.join(o.get('text', '') for o in outputs if o.output_type == 'stream'))


def _assigned(source: str) -> set[str]:
  """The names a parameters cell assigns at top level."""
  names = set()
  for node in ast.parse(source).body:
    for target in getattr(node, 'targets', []):
      names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
  return names


def _check_kernel(report: dict) -> None:
  assert report['executable'] == sys.executable
  assert pathlib.Path(report['jaxpretrain']).is_relative_to(ROOT)
  assert report['devices'] == DEVICES


def test_functional_api_notebook(tmp_path):
  report = run_notebook('functional_api.ipynb', dict(
      PRETRAIN_STEPS=10, FINETUNE_STEPS=30, BATCH_SIZE=32, LABELS_PER_CLASS=20,
      WIDTH=32, DEPTH=1, HEADS=2, TRAIN_IMAGES=2000, TEST_EXAMPLES=1000,
      EVAL_BATCH_SIZE=500), tmp_path)
  _check_kernel(report)
  results = report['results']
  assert set(results) == {'pre-trained', 'from scratch'}
  for metrics in results.values():
    assert metrics['examples'] == 1000
    assert 0.0 < metrics['loss'] < 10.0
  assert results['pre-trained']['accuracy'] > 0.2  # Chance is 0.1.


def _tiny_bert(directory: pathlib.Path) -> pathlib.Path:
  """A randomly initialised BERT (hidden 32) saved as Google's are: weights, config, vocab.txt.

  Its WordPiece vocabulary is trained on the plays' training text, so the notebook's tokenizer
  meets words it knows. Its weights are random: a logistic regression on its mean-pooled
  features reaches only about 23% on six balanced genres, so the test asserts what LoRA
  promises (few trainable parameters, an exact merge) rather than a margin over chance."""
  import transformers  # pylint: disable=g-import-not-at-top
  from jaxpretrain.data import text, tokenizers  # pylint: disable=g-import-not-at-top
  vocab = tokenizers.train_wordpiece(text.pretraining_texts('train'), 2000).get_vocab()
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64)
  transformers.BertModel(config).save_pretrained(directory)
  (directory / 'vocab.txt').write_text(''.join(f'{t}\n' for t in sorted(vocab, key=vocab.get)))
  return directory


def test_bert_lora_notebook(tmp_path):
  bert = _tiny_bert(tmp_path / 'bert')
  report = run_notebook('bert_lora.ipynb', dict(
      MODEL_DIR=str(bert), STEPS=40, BATCH_SIZE=32, SEQ_LEN=64, LORA_RANK=4, LORA_ALPHA=8,
      TRAIN_PER_CLASS=40, TEST_PER_CLASS=40, EVAL_BATCH_SIZE=128), tmp_path)
  _check_kernel(report)
  results = report['results']
  assert results['examples'] == 6 * 40
  assert results['majority_class'] == 1 / 6  # a balanced test set
  assert 0 <= results['accuracy'] <= 1 and 0 <= results['macro_f1'] <= 1
  # Adapters of rank 4 on the blocks' kernels and the new head, against 84,320 BERT weights.
  assert 0 < results['trainable_parameters'] < results['parameters'] / 10
  assert results['merge_max_difference'] < 1e-4


def test_vit_mae_transfer_notebook(tmp_path):
  report = run_notebook('vit_mae_transfer.ipynb', dict(
      PRETRAIN_STEPS=10, FINETUNE_STEPS=30, BATCH_SIZE=32, WIDTH=32, DEPTH=1, HEADS=2,
      DECODER_WIDTH=16, DECODER_DEPTH=1, DECODER_HEADS=2, LABELS_PER_CLASS=20,
      VALIDATION_PER_CLASS=5, FINETUNE_LEARNING_RATE=3e-3, TRAIN_IMAGES=2000,
      TEST_EXAMPLES=1000, EVAL_BATCH_SIZE=500), tmp_path)
  _check_kernel(report)
  results = report['results']
  assert set(results) == {'linear probe, random init', 'linear probe, MAE', 'fine-tuned, MAE'}
  for name in ('linear probe, random init', 'linear probe, MAE'):
    assert results[name]['l2'] > 0 and 0 <= results[name]['validation_accuracy'] <= 1
    assert results[name]['accuracy'] > 0.2  # Chance is 0.1.
  finetuned = results['fine-tuned, MAE']
  assert finetuned['examples'] == 1000 and 0.0 < finetuned['loss'] < 10.0
  assert finetuned['accuracy'] > 0.2
