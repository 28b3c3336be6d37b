"""Semi-supervised classification: labelled and unlabelled images in one batch (FixMatch).

An unlabelled example carries the label `UNLABELLED` (-1), so one batch mixes
both kinds in any proportion (`data.mixed`; `data.unlabelled_ratio` in a run config).
"""

import jax
import jax.numpy as jnp
import optax

from jaxpretrain.data.augment import Augment
from jaxpretrain.data.sources import UNLABELLED
from jaxpretrain.objectives.common import (Objective, augment_images, call_model, example_weights,
                                           mean_over, top1_hits)

def fixmatch(*, augment: Augment | None, strong_augment: Augment | None, threshold: float = 0.95,
             unlabelled_weight: float = 1.0, label_key: str = 'label',
             image_key: str = 'image') -> Objective:
  """FixMatch (Sohn et al., 2020): confident predictions on weak views label strong views.

  In training, each labelled image is weakly augmented (`augment`) and learnt from
  its label by cross-entropy. Each unlabelled image is augmented twice: the model,
  in inference mode and without gradient, predicts the weak view; where the top
  probability reaches `threshold`, that class is the pseudo-label the strongly
  augmented view (`strong_augment`) learns. The unlabelled loss is averaged over
  all unlabelled examples, the unconfident ones counting zero, as in the paper.
  Evaluation is plain cross-entropy and accuracy on unaugmented, labelled images.

  Args:
    augment: the weak augmentation, `(image_HxWxC, rng) -> image_HxWxC`; None leaves
      the images as they are.
    strong_augment: the strong augmentation, of the same form.
    threshold: least top probability on the weak view for a pseudo-label.
    unlabelled_weight: weight of the unlabelled loss (the paper's lambda).
    label_key: batch key of the integer labels, `UNLABELLED` where unknown.
    image_key: batch key of the images.

  Returns:
    An objective with metrics `loss`, `accuracy` and `labelled_loss` (on the
    labelled examples) and, in training, `unlabelled_loss` and `confident` (the
    fraction of unlabelled examples given a pseudo-label).
  """

  def objective(apply_fn, params, batch, rng, *, model_state=None, train=True):
    labels_B = batch[label_key].astype(jnp.int32)
    weights_B = example_weights(batch)
    labelled_B = (labels_B != UNLABELLED).astype(jnp.float32) * weights_B
    unlabelled_B = (labels_B == UNLABELLED).astype(jnp.float32) * weights_B
    images = batch[image_key]
    if train:
      weak_rng, strong_rng, rng = jax.random.split(rng, 3)
      weak = augment_images(augment, images, weak_rng)
      guess, _ = call_model(apply_fn, jax.lax.stop_gradient(params), {**batch, image_key: weak},
                            rng, model_state=model_state, train=False)
      probs_BxK = jax.nn.softmax(guess['logits'].astype(jnp.float32), axis=-1)
      confident_B = (jnp.max(probs_BxK, axis=-1) >= threshold).astype(jnp.float32)
      strong = augment_images(strong_augment, images, strong_rng)
      is_labelled = labelled_B.reshape((-1,) + (1,) * (images.ndim - 1)) > 0
      images = jnp.where(is_labelled, weak, strong)
      # Labelled examples keep their label; the others take the weak view's guess.
      labels_B = jnp.where(labelled_B > 0, labels_B, jnp.argmax(probs_BxK, axis=-1))
    outputs, metrics = call_model(apply_fn, params, {**batch, image_key: images}, rng,
                                  model_state=model_state, train=train)
    logits_BxK = outputs['logits'].astype(jnp.float32)
    safe_labels_B = jnp.maximum(labels_B, 0)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, safe_labels_B)
    labelled_loss = mean_over(ce_B, labelled_B)
    hits_B = top1_hits(logits=logits_BxK, labels=safe_labels_B)
    metrics = {**metrics, 'labelled_loss': labelled_loss,
               'accuracy': mean_over(hits_B, labelled_B)}
    loss = labelled_loss
    if train:
      unlabelled_loss = mean_over(ce_B * confident_B, unlabelled_B)
      loss += unlabelled_weight * unlabelled_loss
      metrics.update(unlabelled_loss=unlabelled_loss,
                     confident=mean_over(confident_B, unlabelled_B))
    return loss, {**metrics, 'loss': loss}

  return objective
