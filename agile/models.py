"""AgileNN's modules (Huang & Gao, MobiCom'22): feature extractor, local and remote
predictors, soft-to-hard quantizer, learned combination, and the whole split network.

Every module follows Keras' defaults where the original relied on them
(glorot-uniform kernels, BN epsilon 1e-3); see docs/agile.md for what differs.
Shapes use the digest's names: f is the 24-channel feature map, the first `k`
channels stay on the device, the other 24 - k are quantised and offloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.batchnorm import BatchNorm
from common.mobilenet import DepthwiseConv, MobileNetV2Body

GLOROT = nn.initializers.xavier_uniform()
KERAS_NORMAL = nn.initializers.normal(0.05)
BN_EPS = 1e-3

# (t, c, n, s) rows of the original remote predictor (strides of the CIFAR config).
PAPER_REMOTE_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def num_local_channels(split_ratio: float, channels: int = 24) -> int:
  """K = round_half_even(split_ratio * channels), as `np.round` in the original."""
  return int(np.round(split_ratio * channels))


@dataclasses.dataclass(frozen=True)
class AgileConfig:
  """Architecture of an AgileNN (frozen; built from `config.model`).

  Attributes:
    num_classes: classes.
    feature_channels: channels of the feature extractor's output (24: the EffNetV2-S stem width).
    fe_stride: stride of the first separable conv (3 for 96x96 CIFAR-style inputs, 2 for 128x128).
    split_ratio: share of channels kept on the device; K = round(split_ratio * feature_channels).
    num_centroids: quantiser levels (8 = 3 bits per remote element).
    remote_settings: (t, c, n, s) rows of the remote predictor's inverted residuals.
    remote_last_channels: width of the remote predictor's last 1x1 conv (1280 in the paper).
    remote_stem_channels: width of the remote predictor's first separable conv (16).
    temperature: T in softmax(w / T) of the combination.
    quantizer_backward: "soft" (the original: gradients through the soft assignment) or
      "identity" (plain straight-through).
    bn_momentum: BatchNorm momentum (Keras: 0.99).
    shifted_depthwise: depthwise convs as shifted multiply-adds (training on XLA:CPU) or
      as grouped convolutions (export: TFLite DEPTHWISE_CONV_2D); same parameters.
    dot_filter_gradients: the remote predictor's 1x1 convs' filter gradients as matmuls
      (`common.mobilenet.PointwiseConv`); the same forward and parameters.
  """

  num_classes: int = 10
  feature_channels: int = 24
  fe_stride: int = 3
  split_ratio: float = 0.2
  num_centroids: int = 8
  remote_settings: tuple[tuple[int, int, int, int], ...] = PAPER_REMOTE_SETTINGS
  remote_last_channels: int = 1280
  remote_stem_channels: int = 16
  temperature: float = 1.0
  quantizer_backward: str = "soft"
  bn_momentum: float = 0.99
  shifted_depthwise: bool = True
  dot_filter_gradients: bool = True

  @property
  def k(self) -> int:
    return num_local_channels(self.split_ratio, self.feature_channels)


class SeparableConv(nn.Module):
  """Keras SeparableConv2D: depthwise 3x3 (multiplier 1) then pointwise 1x1, no bias."""

  features: int
  stride: int = 1
  shifted: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = DepthwiseConv(3, self.stride, kernel_init=GLOROT, shifted=self.shifted, name="dw")(x)
    return nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=GLOROT, name="pw")(x)


class FeatureExtractor(nn.Module):
  """The on-device extractor: SepConv(4, stride) -> BN -> ReLU6 -> SepConv(24) -> BN -> ReLU6."""

  channels: int = 24
  stride: int = 3
  bn_momentum: float = 0.99
  shifted_depthwise: bool = True

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
    bn = lambda name: BatchNorm(not train, momentum=self.bn_momentum, epsilon=BN_EPS, name=name)
    x = SeparableConv(4, self.stride, self.shifted_depthwise, name="sep1")(x_BHWC)
    x = nn.relu6(bn("bn1")(x))
    x = SeparableConv(self.channels, 1, self.shifted_depthwise, name="sep2")(x)
    return nn.relu6(bn("bn2")(x))


class LocalPredictor(nn.Module):
  """GAP -> Dense(num_classes) -> BN (the BN sits on the logits, as in the original)."""

  num_classes: int
  bn_momentum: float = 0.99

  @nn.compact
  def __call__(self, f_BHWK: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Dense(self.num_classes, kernel_init=GLOROT, name="dense")(f_BHWK.mean(axis=(1, 2)))
    return BatchNorm(not train, momentum=self.bn_momentum, epsilon=BN_EPS, name="bn")(x)


class RemotePredictor(nn.Module):
  """SepConv(16) -> MobileNetV2 inverted residuals -> 1x1 conv -> GAP -> Dense -> BN."""

  num_classes: int
  settings: Sequence[tuple[int, int, int, int]] = PAPER_REMOTE_SETTINGS
  last_channels: int = 1280
  stem_channels: int = 16
  bn_momentum: float = 0.99
  shifted_depthwise: bool = True
  dot_filter_gradients: bool = True

  @nn.compact
  def __call__(self, q_BHWR: jax.Array, *, train: bool) -> jax.Array:
    x = SeparableConv(self.stem_channels, 1, self.shifted_depthwise, name="stem")(q_BHWR)
    x = MobileNetV2Body(
      settings=tuple(self.settings),
      last_channels=self.last_channels,
      bn_momentum=self.bn_momentum,
      shifted_depthwise=self.shifted_depthwise,
      dot_filter_gradients=self.dot_filter_gradients,
      name="body",
    )(x, train=train)
    x = nn.Dense(self.num_classes, kernel_init=GLOROT, name="dense")(x.mean(axis=(1, 2)))
    return BatchNorm(not train, momentum=self.bn_momentum, epsilon=BN_EPS, name="bn")(x)


def centroids_from_logits(q_logits: jax.Array) -> jax.Array:
  """c = 6 * sigmoid(q): centroids kept inside the ReLU6 range."""
  return 6.0 * jax.nn.sigmoid(q_logits)


def quantize(x: jax.Array, centroids: jax.Array, *, backward: str = "soft") -> tuple[jax.Array, jax.Array]:
  """Element-wise soft-to-hard scalar quantisation (Agustsson et al. 2017, as in AgileNN).

  Args:
    x: any shape.
    centroids: [C].
    backward: "soft": y = y_soft + stop_gradient(y_hard - y_soft), so gradients flow
      through softmax(-(x - c)^2) to x and to the centroids (the original);
      "identity": y = x + stop_gradient(y_hard - x), the plain straight-through estimator.

  Returns:
    (y, idx): y has x's shape and equals the nearest centroid in the forward pass;
    idx (int32) are the symbols that get transmitted.
  """
  d = jnp.square(x[..., None] - centroids)
  idx = jnp.argmin(d, axis=-1).astype(jnp.int32)
  hard = centroids[idx]
  if backward == "soft":
    soft = jnp.sum(jax.nn.softmax(-d, axis=-1) * centroids, axis=-1)
  elif backward == "identity":
    soft = x
  else:
    raise ValueError(f"quantizer backward {backward!r}: must be 'soft' or 'identity'")
  return soft + jax.lax.stop_gradient(hard - soft), idx


class Quantizer(nn.Module):
  """Learned centroids c = 6 sigmoid(q), q ~ N(0, 0.05^2) (all start near 3)."""

  num_centroids: int = 8
  backward: str = "soft"

  def setup(self):
    self.q_centroids = self.param("q_centroids", KERAS_NORMAL, (self.num_centroids,))

  def centroids(self) -> jax.Array:
    return centroids_from_logits(self.q_centroids)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return quantize(x, self.centroids(), backward=self.backward)


class Combiner(nn.Module):
  """y = w1 * local + w2 * remote with (w1, w2) = softmax(w / T), w ~ N(0, 0.05^2)."""

  temperature: float = 1.0

  def setup(self):
    self.w = self.param("w", KERAS_NORMAL, (2,))

  def weights(self) -> jax.Array:
    return jax.nn.softmax(self.w / self.temperature)

  def __call__(self, local: jax.Array, remote: jax.Array) -> jax.Array:
    wn = self.weights()
    return wn[0] * local + wn[1] * remote


class AgileNN(nn.Module):
  """The split network. `__call__(x, train=)` -> (combined logits, aux).

  aux holds "features" (f), "local_logits", "remote_logits", "symbols" (remote
  quantiser indices) and "quantized" (the dequantised remote features).
  `device` and `remote` are the two deployable halves.
  """

  config: AgileConfig

  def setup(self):
    c = self.config
    self.fe = FeatureExtractor(c.feature_channels, c.fe_stride, c.bn_momentum, c.shifted_depthwise)
    self.local = LocalPredictor(c.num_classes, c.bn_momentum)
    self.quantizer = Quantizer(c.num_centroids, c.quantizer_backward)
    self.remote_predictor = RemotePredictor(
      c.num_classes,
      c.remote_settings,
      c.remote_last_channels,
      c.remote_stem_channels,
      c.bn_momentum,
      c.shifted_depthwise,
      c.dot_filter_gradients,
    )
    self.combiner = Combiner(c.temperature)

  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    k = self.config.k
    f = self.fe(x_BHWC, train=train)
    local_logits = self.local(f[..., :k], train=train)
    q, idx = self.quantizer(f[..., k:])
    remote_logits = self.remote_predictor(q, train=train)
    logits = self.combiner(local_logits, remote_logits)
    aux = {
      "features": f,
      "local_logits": local_logits,
      "remote_logits": remote_logits,
      "symbols": idx,
      "quantized": q,
    }
    return logits, aux

  def device(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inference on the device: (local logits, remote symbols)."""
    k = self.config.k
    f = self.fe(x_BHWC, train=False)
    _, idx = self.quantizer(f[..., k:])
    return self.local(f[..., :k], train=False), idx

  def remote(self, q_BHWR: jax.Array) -> jax.Array:
    """Inference on the server from dequantised remote features."""
    return self.remote_predictor(q_BHWR, train=False)

  def dequantize(self, idx: jax.Array) -> jax.Array:
    return self.quantizer.centroids()[idx]

  def combine(self, local: jax.Array, remote: jax.Array) -> jax.Array:
    return self.combiner(local, remote)

  def combination_weights(self) -> jax.Array:
    return self.combiner.weights()

  def centroids(self) -> jax.Array:
    return self.quantizer.centroids()


def init_variables(model: AgileNN, key: jax.Array, input_shape: Sequence[int]) -> dict:
  """Initial {"params", "batch_stats"} of an AgileNN for inputs [1, *input_shape]."""
  return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
