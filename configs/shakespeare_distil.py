"""DistilBERT-style masked-LM pre-training by distillation from a BERT-mini teacher.

The student is a DistilBERT configuration (no token types, no pooler) with half
the teacher's layers at the teacher's width, as DistilBERT halves BERT, and the
teacher's position encoding. It
learns the masked-LM task from `alpha` times the temperature-scaled KL to the
frozen teacher's logits plus `1 - alpha` times the hard-label loss; the teacher
runs inside the same step on the same masked inputs.

Name the teacher, a `shakespeare_bert_mlm` work directory (or a Hugging Face
`*ForMaskedLM` directory), in `finetune.teacher` (its model is read from its
checkpoint manifest or `config.json`, and its frozen parameters are added under
`teacher/`) and in `data.tokenizer.path`: the student must share its tokenizer
(a teacher whose vocabulary differs from the run's tokenizer is refused).

Set `finetune.pretrained` to the same directory to start the student from every
other teacher layer (layer i from teacher layer 2i, plus the embeddings and the
masked-LM head), as DistilBERT does; leave it empty to start from scratch. The
`rename` rules assume the default teacher's depth. `:tiny` for tests (its
teacher is `shakespeare_bert_mlm.py:tiny`).
"""

import pathlib

from jaxpretrain.config import import_file, run_config
from jaxpretrain.models import PRESETS

common = import_file(pathlib.Path(__file__).with_name('shakespeare_common.py'))

TEACHER_PRESET = 'bert_mini'


def _student(variant):
  """DistilBERT's shape at half the teacher's depth; returns it and the teacher's depth."""
  teacher = PRESETS[TEACHER_PRESET]
  student = common.transformer('distilbert_base', variant)
  teacher_layers = student.num_layers or teacher.num_layers
  if variant != 'tiny':  # The tiny section already has the tiny teacher's width.
    student.update(dict(hidden_size=teacher.hidden_size, num_heads=teacher.num_heads,
                        intermediate_size=teacher.intermediate_size,
                        max_position_embeddings=teacher.max_position_embeddings))
  student.num_layers = teacher_layers // 2
  student.position_encoding = common.ENCODER_POSITION_ENCODING
  return student, teacher_layers


def _every_other_layer(teacher_layers):
  """Rename rules: student layer i is teacher layer 2i; odd teacher layers are set aside."""
  return tuple((f'encoder/layer_{i}/(.*)',
                rf'encoder/layer_{i // 2}/\1' if i % 2 == 0 else rf'unused/layer_{i}/\1')
               for i in range(teacher_layers))


def get_config(variant=None):
  c = run_config()
  c.data = common.data('shakespeare_mlm', variant, seq_len=128, task='mlm')
  student, teacher_layers = _student(variant)
  c.model = dict(name='bert_mlm', transformer=student)
  c.objective = dict(name='distillation', task='masked_lm', rate=0.15, temperature=2.0,
                     alpha=0.5)
  c = common.lm_schedule(c, variant, steps=2000)
  c.finetune.teacher = ''
  c.finetune.teacher_step = 'best'
  c.finetune.step = 'best'
  c.finetune.select = '(encoder|head)/.*'
  c.finetune.rename = _every_other_layer(teacher_layers)
  return c
