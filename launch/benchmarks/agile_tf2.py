"""The original AgileNN training step in TensorFlow 2 (the official code's `step`), for timing.

    python -m launch.benchmarks.agile_tf2 --serve --batch 64 --input_size 96 --num_classes 100

`launch.bench agile --tf2` runs this module as a child process and times its step interleaved
with the JAX step. The step follows the official TF2/Keras code (`pittisl/AgileNN`) as the
AgileNN digest describes it, written from that description:

  feature extractor   SepConv(4, stride) -> BN -> ReLU6 -> SepConv(24) -> BN -> ReLU6
  local predictor     GAP -> Dense(classes) -> BN, on the first k channels
  quantizer           c = 6 sigmoid(q), q (1, C) ~ N(0, 0.05^2); softmax(-(x - c)^2) soft path,
                      argmin hard path, straight-through (y = soft + stop_gradient(hard - soft))
  remote predictor    SepConv(16) -> MobileNetV2 inverted residuals -> 1x1 conv 1280 -> BN ->
                      ReLU6 -> GAP -> Dense -> BN, on the 24 - k quantised channels
  combination         softmax(w / T) weights, w (1, 2) ~ N(0, 0.05^2)
  evaluator           Keras EfficientNetV2-S (`weights=None`: random weights, enough for timing)
                      with its stem cut (the body reads the 24-channel features), GAP ->
                      Dropout(0.5) -> Dense, frozen, `training=False`
  XAI                 g = grad_f CE(evaluator(f)), g0 = the same at f0 = 0 (both inner
                      GradientTapes, every step), I = |0.5 (g0 + g) (f - f0)|, the skewness
                      hinge and the element-wise disorder loss
  loss                lam CE + (1 - lam) (L_skew + L_dis); the outer tape's gradient is
                      grad-of-grad through the evaluator; SGD with momentum 0.9 and decoupled
                      weight decay 5e-4 lr_t under a cosine schedule (tfa SGDW's update, which
                      Keras 3's SGD with `weight_decay` applies)

all inside one `tf.function` without XLA (`jit_compile=False`: the original's plain
`@tf.function`; TensorFlow's CPU kernels with oneDNN). The per-batch input pipeline (random flip,
pad 4 and random crop, normalisation, bilinear resize 32 -> 96) is inside the step too, because
the JAX step that it is compared with does that work inside its jitted step (the original ran it
in `tf.data`).

Server protocol (`--serve`): after building and tracing, one JSON line {"ready": ...}; then per
stdin line "step" one step and one JSON line {"step_s": ...}; on "quit" (or end of input) one
JSON line with the resident set: `peak_rss_step_bytes` is the peak over every step run since the
trace (the high-water mark is reset after tracing, as `agile_memory` does for the JAX step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402

# (t, c, n, s) of the original remote predictor (CIFAR strides): `agile.models.PAPER_REMOTE_SETTINGS`,
# repeated here because this process must not import JAX (its memory is measured)
REMOTE_SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)

STEM_LAYERS = ("stem_conv", "stem_bn", "stem_activation")


def set_threads(threads: int) -> None:
  """TensorFlow's intra- and inter-op pools at `threads` (before any op runs)."""
  import tensorflow as tf

  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  tf.config.set_visible_devices([], "GPU")


# ------------------------------------------------------------------ pure loss terms


def soft_quantize(x, centroids):
  """(y, idx): element-wise soft-to-hard quantisation of x against centroids (C,) or (1, C)."""
  import tensorflow as tf

  c = tf.reshape(centroids, (-1,))
  d = tf.square(x[..., None] - c)
  idx = tf.argmin(d, axis=-1, output_type=tf.int32)
  hard = tf.gather(c, idx)
  soft = tf.reduce_sum(tf.nn.softmax(-d, axis=-1) * c, axis=-1)
  return soft + tf.stop_gradient(hard - soft), idx


def xai_losses(importance, k: int, rho: float):
  """(skewness loss, disorder loss, mean skewness) of an importance map (B, H, W, C)."""
  import tensorflow as tf

  per_channel = tf.reduce_sum(importance, axis=[1, 2])
  local = tf.reduce_sum(per_channel[:, :k], axis=-1)
  remote = tf.reduce_sum(per_channel[:, k:], axis=-1)
  total = tf.reduce_sum(per_channel, axis=-1)
  mins = tf.reduce_min(importance[..., :k], axis=[1, 2, 3])
  maxs = tf.reduce_max(importance[..., k:], axis=[1, 2, 3])
  disorder = tf.reduce_mean(tf.maximum((maxs - mins) / total, 0.0))
  skew = local / (remote + local + 1e-9)
  return tf.reduce_mean(tf.maximum(rho - skew, 0.0)), disorder, tf.reduce_mean(skew)


# ------------------------------------------------------------------ modules


def build_feature_extractor(stride: int, channels: int = 24):
  import keras

  L = keras.layers
  return keras.Sequential(
    [
      L.SeparableConv2D(4, 3, strides=stride, padding="same", use_bias=False),
      L.BatchNormalization(),
      L.ReLU(max_value=6.0),
      L.SeparableConv2D(channels, 3, padding="same", use_bias=False),
      L.BatchNormalization(),
      L.ReLU(max_value=6.0),
    ],
    name="fe",
  )


def build_local_predictor(num_classes: int):
  import keras

  L = keras.layers
  return keras.Sequential(
    [L.GlobalAveragePooling2D(), L.Dense(num_classes), L.BatchNormalization()], name="l_predictor"
  )


def _inverted_residual(x, inp: int, out: int, stride: int, t: int):
  from keras import layers as L

  h = x
  if t != 1:
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(int(round(inp * t)), 1, use_bias=False)(h)))
  h = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
  h = L.ReLU(6.0)(L.BatchNormalization()(h))
  h = L.BatchNormalization()(L.Conv2D(out, 1, use_bias=False)(h))
  return L.Add()([x, h]) if stride == 1 and inp == out else h


def build_remote_predictor(in_shape, num_classes: int, settings=REMOTE_SETTINGS, last: int = 1280):
  import keras
  from keras import layers as L

  x_in = keras.Input(in_shape)
  x = L.SeparableConv2D(16, 3, padding="same", use_bias=False)(x_in)
  inp = 16
  for t, c, n, s in settings:
    for i in range(n):
      x = _inverted_residual(x, inp, c, s if i == 0 else 1, t)
      inp = c
  x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(last, 1, use_bias=False)(x)))
  x = L.Dense(num_classes)(L.GlobalAveragePooling2D()(x))
  return keras.Model(x_in, L.BatchNormalization()(x), name="r_predictor")


def _layers():
  import keras
  import tensorflow as tf

  class Quantizer(keras.layers.Layer):
    def __init__(self, num_centroids: int, **kw):
      super().__init__(**kw)
      init = keras.initializers.RandomNormal(stddev=0.05)
      self.q_centroids = self.add_weight(shape=(1, num_centroids), initializer=init, name="q_centroids")

    def call(self, x):
      return soft_quantize(x, 6.0 * tf.sigmoid(self.q_centroids))

  class Reweighting(keras.layers.Layer):
    def __init__(self, temperature: float = 1.0, **kw):
      super().__init__(**kw)
      self.temperature = temperature
      init = keras.initializers.RandomNormal(stddev=0.05)
      self.w = self.add_weight(shape=(1, 2), initializer=init, name="w")

    def call(self, local, remote):
      wn = tf.nn.softmax(self.w / self.temperature)
      return wn[0, 0] * local + wn[0, 1] * remote

  return Quantizer, Reweighting


def _rewire(node, old: str, new: str):
  """`node` (a functional config) with every reference to layer `old` pointed at layer `new`."""
  if isinstance(node, dict):
    out = {k: _rewire(v, old, new) for k, v in node.items()}
    if "keras_history" in out and out["keras_history"][0] == old:
      out["keras_history"] = [new, *out["keras_history"][1:]]
    return out
  if isinstance(node, list | tuple):
    return type(node)(_rewire(v, old, new) for v in node)
  return node


def build_evaluator(feature_size: int, num_classes: int, channels: int = 24):
  """EfficientNetV2-S built at `feature_size`, its stem cut (the input becomes the 24-channel
  features), GAP -> Dropout(0.5) -> Dense on top; frozen."""
  import keras

  backbone = keras.applications.EfficientNetV2S(
    include_top=False, weights=None, input_shape=(feature_size, feature_size, 3), include_preprocessing=False
  )
  config = backbone.get_config()
  input_name = config["input_layers"][0]
  config["layers"] = [layer for layer in config["layers"] if layer["name"] not in STEM_LAYERS]
  config["layers"][0]["config"]["batch_shape"] = (None, feature_size, feature_size, channels)
  config = _rewire(config, STEM_LAYERS[-1], input_name)
  body = keras.Model.from_config(config)
  x = keras.layers.GlobalAveragePooling2D()(body.output)
  x = keras.layers.Dense(num_classes)(keras.layers.Dropout(0.5)(x))
  evaluator = keras.Model(body.input, x, name="evaluator")
  evaluator.trainable = False
  return evaluator


# ------------------------------------------------------------------ the step


def make_preprocess(mean, std, pad: int, input_size: int):
  """The original's training pipeline on a batch in [0, 1]: random flip, pad and random crop
  (each example its own), normalise, bilinear resize to `input_size`."""
  import tensorflow as tf

  mean_t = tf.reshape(tf.constant(mean, tf.float32), (1, 1, 1, 3))
  std_t = tf.reshape(tf.constant(std, tf.float32), (1, 1, 1, 3))

  def prep(images):
    _, h, w, c = images.shape
    x = tf.image.random_flip_left_right(images)
    if pad:
      x = tf.image.pad_to_bounding_box(x, pad, pad, h + 2 * pad, w + 2 * pad)
      x = tf.map_fn(lambda im: tf.image.random_crop(im, (h, w, c)), x)
    return tf.image.resize((x - mean_t) / std_t, [input_size, input_size])

  return prep


def build_parts(
  *, input_size: int, num_classes: int, k: int, fe_stride: int = 3, channels: int = 24,
  num_centroids: int = 8, evaluator_fn=None, remote_settings=REMOTE_SETTINGS, seed: int = 0,
) -> dict:  # fmt: skip
  """AgileNN's Keras modules and the frozen evaluator (`evaluator_fn(feature_size, num_classes)`,
  EfficientNetV2-S without its stem by default), built for `input_size` inputs."""
  import keras

  keras.utils.set_random_seed(seed)
  Quantizer, Reweighting = _layers()
  fs = -(-input_size // fe_stride)
  parts = {
    "fe": build_feature_extractor(fe_stride, channels),
    "local": build_local_predictor(num_classes),
    "quantizer": Quantizer(num_centroids, name="q_layer"),
    "remote": build_remote_predictor((fs, fs, channels - k), num_classes, remote_settings),
    "reweight": Reweighting(name="reweighting"),
    "evaluator": (evaluator_fn or build_evaluator)(fs, num_classes),
  }
  parts["fe"].build((None, input_size, input_size, 3))
  parts["local"].build((None, fs, fs, k))
  return parts


def trainable_weights(parts: dict) -> list:
  """The trained variables: everything but the evaluator."""
  return [w for name, p in parts.items() if name != "evaluator" for w in p.trainable_weights]


def sgdw(learning_rate: float = 0.1, decay_steps: int = 10_000, weight_decay: float = 5e-4):
  """SGD, momentum 0.9, decoupled weight decay weight_decay * lr_t, cosine schedule to 0."""
  import keras

  schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
  return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, weight_decay=weight_decay)


def integrated_gradients(evaluator, f, labels):
  """I = |0.5 (g0 + g) (f - f0)|, g and g0 the frozen evaluator's mean-CE input gradients at f
  and at f0 = 0, each from an inner GradientTape (so an outer tape differentiates I again)."""
  import keras
  import tensorflow as tf

  ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def evaluator_grad(x):
    with tf.GradientTape() as inner:
      inner.watch(x)
      loss = ce(labels, evaluator(x, training=False))
    return inner.gradient(loss, x)

  f0 = tf.zeros_like(f)
  return tf.abs(0.5 * (evaluator_grad(f0) + evaluator_grad(f)) * (f - f0))


def make_train_step(parts: dict, optimizer, prep, *, k: int, rho: float, lam: float):
  """`step(images, labels) -> losses`: one training step of the original, in one tf.function."""
  import keras
  import tensorflow as tf

  ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  weights = trainable_weights(parts)
  optimizer.build(weights)

  @tf.function(jit_compile=False)
  def step(images, labels):
    x = prep(images)
    with tf.GradientTape() as tape:
      f = parts["fe"](x, training=True)
      importance = integrated_gradients(parts["evaluator"], f, labels)
      skew_loss, disorder_loss, skewness = xai_losses(importance, k, rho)
      q, _ = parts["quantizer"](f[..., k:])
      local = parts["local"](f[..., :k], training=True)
      logits = parts["reweight"](local, parts["remote"](q, training=True))
      ce_loss = ce(labels, logits)
      loss = lam * ce_loss + (1.0 - lam) * (skew_loss + disorder_loss)
    optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
    return {"loss": loss, "ce": ce_loss, "skew_loss": skew_loss, "disorder_loss": disorder_loss,
            "skewness": skewness}  # fmt: skip

  return step


# ------------------------------------------------------------------ the child process


def _reply(obj: dict) -> None:
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def serve(args) -> None:
  """Builds and traces the step, then runs one step per "step" line of stdin (protocol above)."""
  import tensorflow as tf

  from launch.benchmarks import agile_memory

  set_threads(args.threads)
  t0 = time.perf_counter()
  parts = build_parts(input_size=args.input_size, num_classes=args.num_classes, k=args.k,
                      fe_stride=args.fe_stride, num_centroids=args.num_centroids)  # fmt: skip
  prep = make_preprocess(_floats(args.mean), _floats(args.std), args.pad, args.input_size)
  step = make_train_step(parts, sgdw(), prep, k=args.k, rho=args.rho, lam=args.lam)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=(args.batch, args.image_size, args.image_size, 3)), tf.float32)
  labels = tf.constant(rng.integers(0, args.num_classes, args.batch), tf.int32)
  build_s = time.perf_counter() - t0
  step.get_concrete_function(images, labels)  # trace, no step run
  before = agile_memory.status_bytes("VmRSS")
  reset = agile_memory.reset_peak()
  _reply({"ready": True, "build_s": build_s, "trace_s": time.perf_counter() - t0 - build_s,
          "threads": args.threads, "tf_version": tf.__version__,
          "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")})  # fmt: skip
  steps = 0
  for line in sys.stdin:
    if line.strip() != "step":
      break
    t1 = time.perf_counter()
    losses = {k: float(v) for k, v in step(images, labels).items()}
    steps += 1
    _reply({"step_s": time.perf_counter() - t1, **losses})
  peak = agile_memory.status_bytes("VmHWM") if reset else None
  _reply({"steps": steps, "rss_before_first_step_bytes": before, "peak_rss_step_bytes": peak,
          "step_transient_bytes": None if peak is None or before is None else peak - before})  # fmt: skip


class Child:
  """The step server in a child process of its own (TF's thread pools apart from JAX's): `step()`
  runs one TF2 step there and returns its JSON reply once it is done."""

  def __init__(self, argv: list[str]):
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
      argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
    )
    self.ready = self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    self._stderr.seek(0)
    tail = self._stderr.read().strip().splitlines()[-1:]
    raise RuntimeError(f"the TF2 step server exited with status {self.proc.wait()}: {tail}")

  def _send(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def step(self) -> dict:
    return self._send("step")

  def close(self) -> dict:
    """Ends the server; its resident-set report."""
    out = self._send("quit")
    self.proc.wait(timeout=60)
    self._stderr.close()
    return out


def start_child(**flags) -> Child:
  """Starts `python -m launch.benchmarks.agile_tf2 --serve` with `--key value` for each flag and
  waits until its step is traced."""
  argv = [sys.executable, "-m", "launch.benchmarks.agile_tf2", "--serve"]
  for key, value in flags.items():
    argv += [f"--{key}", ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)]
  return Child(argv)


def _floats(text: str) -> tuple[float, ...]:
  return tuple(float(v) for v in text.split(","))


def add_args(parser) -> None:
  parser.add_argument("--serve", action="store_true", help="run the step server (the only mode)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=32, help="stored image size before the resize")
  parser.add_argument("--input_size", type=int, default=96)
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--fe_stride", type=int, default=3)
  parser.add_argument("--k", type=int, default=5, help="local channels, round(split_ratio * 24)")
  parser.add_argument("--num_centroids", type=int, default=8)
  parser.add_argument("--rho", type=float, default=0.8)
  parser.add_argument("--lam", type=float, default=0.8)
  parser.add_argument("--mean", default="0.507,0.487,0.441", help="normalisation (CIFAR-100's)")
  parser.add_argument("--std", default="0.267,0.256,0.276")
  parser.add_argument("--pad", type=int, default=4)
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))


def main(argv: list[str] | None = None) -> int:
  from common.cli import ArgumentParser

  parser = ArgumentParser(prog="python -m launch.benchmarks.agile_tf2", description=__doc__.splitlines()[0])
  add_args(parser)
  args = parser.parse_args(argv)
  if not args.serve:
    parser.error("--serve is the only mode (launch.bench agile --tf2 drives it)")
  serve(args)
  return 0


if __name__ == "__main__":
  from common.cli import run_main

  run_main(main)
