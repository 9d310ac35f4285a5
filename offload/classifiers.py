"""Source (a) of metrics: a weak and a strong classifier trained with `common`, then the k-fold protocol.

The weak model is a tiny SmallCNN, the strong one a wider, deeper SmallCNN. Both
are trained on the first `classifier_fraction` of the training split; the
remaining training images and the whole test split (never seen by either
classifier) are the metric images, divided into `folds` folds (the ILSVRC
validation images play this role in the original). Output: one metrics file
per fold in the original npz schema.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from common import classifier, data
from common import train as train_lib
from common.models import SmallCNN
from offload import data as odata
from offload import metrics as om


def train_one(name, widths, ds, test_ds, cfg, key, workdir: Path, mean, std, show_progress):
  model = SmallCNN(widths=tuple(widths), num_classes=ds.num_classes)
  steps = data.num_batches(len(ds), cfg.batch_size, drop_last=True) * cfg.num_epochs
  tx = optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, max(steps, 1)))
  init_key, train_key = jax.random.split(key)
  state = classifier.init_state(model, tx, init_key, ds.image_shape)
  train_step, eval_step = classifier.make_steps(model, tx, mean=mean, std=std)
  loop = train_lib.LoopConfig(
    num_epochs=cfg.num_epochs,
    batch_size=cfg.batch_size,
    checkpoint_every=cfg.checkpoint_every,
    desc=f"offload: {name} CNN",
  )
  state, hist = train_lib.fit(
    state,
    train_step,
    ds,
    loop,
    key=train_key,
    workdir=workdir / name,
    evaluate=lambda s: train_lib.evaluate_batches(eval_step, s, test_ds, 256),
    show_progress=show_progress,
  )
  predict = jax.jit(classifier.predict_fn(model, state, mean=mean, std=std))
  return predict, hist[-1]


def make_metrics(config: ml_collections.ConfigDict, workdir: Path, *, show_progress: bool = True) -> dict:
  """Trains the pair, computes metrics; writes workdir/metrics/fold{f}_cost{c}.npz.

  Config keys (`config.metrics.classifiers`): dataset, data_dir, widths_weak, widths_strong,
  num_epochs, batch_size, learning_rate, classifier_fraction, folds; `config.metrics.cost`.

  Returns:
    {"files": [...], "weak_accuracy", "strong_accuracy", "weak_loss", "strong_loss", "n_images"}.
  """
  c = config.metrics.classifiers
  ctype = om.COSTS[config.metrics.cost]
  key = jax.random.key(config.seed)
  k_split, k_weak, k_strong, k_fold = jax.random.split(key, 4)
  train_ds, test_ds = data.load(c.dataset, data_dir=c.data_dir or None)
  perm = np.asarray(jax.random.permutation(k_split, len(train_ds)))
  n_cls = int(len(train_ds) * c.classifier_fraction)
  cls_ds = data.Dataset(
    train_ds.images[perm[:n_cls]], train_ds.labels[perm[:n_cls]], train_ds.num_classes, c.dataset
  )
  images = np.concatenate([train_ds.images[perm[n_cls:]], test_ds.images])
  labels = np.concatenate([train_ds.labels[perm[n_cls:]], test_ds.labels])
  mean, std = data.channel_stats(cls_ds)
  held = data.Dataset(images, labels, train_ds.num_classes, c.dataset)
  wpred, wev = train_one("weak", c.widths_weak, cls_ds, held, c, k_weak, workdir, mean, std, show_progress)
  spred, sev = train_one(
    "strong", c.widths_strong, cls_ds, held, c, k_strong, workdir, mean, std, show_progress
  )
  wlogits = np.concatenate([np.asarray(wpred(images[i : i + 256])) for i in range(0, len(images), 256)])
  slogits = np.concatenate([np.asarray(spred(images[i : i + 256])) for i in range(0, len(images), 256)])
  split = np.asarray(jax.random.permutation(k_fold, len(labels))) % c.folds
  wrank, srank = om.ranks(wlogits, labels), om.ranks(slogits, labels)
  files = []
  folds = om.kfold_metrics(wlogits, labels, wrank, srank, split, ctype)
  for f, arrays in enumerate(folds):
    path = workdir / "metrics" / f"fold{f}_cost{ctype}.npz"
    odata.save_npz(path, arrays)
    files.append(str(path))
  wcost, scost = om.costs(wrank, srank, ctype)
  return {
    "files": files,
    "weak_accuracy": float(wev["accuracy"]),
    "strong_accuracy": float(sev["accuracy"]),
    "weak_loss": float(wcost.mean()),
    "strong_loss": float(scost.mean()),
    "n_images": int(len(labels)),
    "bandwidths": [float(a["bandwidth"]) for a in folds],
    "tinv": [float(a["tinv"]) for a in folds],
  }
