"""BatchNorm whose training-mode statistics and gradients are multi-output reductions on XLA:CPU.

`BatchNorm` is a drop-in for `flax.linen.BatchNorm` (same fields, same variables: params
scale and bias, batch_stats mean and var; the same running-average update and fast variance
E[x^2] - E[x]^2 clipped at 0). For a float NHWC input in training mode it runs
`batch_norm_train`, a custom VJP: the statistics are one reduction over the width with two
outputs (sum x, sum x^2, fused with their producers; `channel_sums`) and sums of its rows, and
the backward pass is the closed-form BN gradient with one two-output reduction (sum g,
sum g * xhat). Autodiff of
flax's form instead emits a separate reduction over batch and space for every sum (the mean,
the mean square, and in the backward pass the bias, scale, mean and variance cotangents), which
XLA:CPU's own reduction emitter runs slowly (with YNN fusion off, the launchers' option: 43 ms
for the statistics of 64x32x32x96, `python -m launch.bench agile --ops_only`) and YNN's
reductions only after writing each producer to a buffer. Every other case (running averages,
other ranks, masks, a named axis, other dtypes) is flax's own code. The numbers are flax's up to
summation order (tests/common/test_common_batchnorm.py, float64).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import normalization as flax_norm

from common.xla_cpu import fused_reductions


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def channel_sums(shape: tuple[int, ...], *xs: jax.Array) -> tuple[jax.Array, ...]:
  """Per-channel sums over batch and space of same-shaped (B, H, W, C) arrays, each (C,).

  One reduction over the width with len(xs) outputs (its producers fused, each input read
  once), then sums of the (B, H, C) rows: no float32 sum runs over more than max(B, H, W)
  terms in a row (XLA:CPU sums a reduction's terms one after another, so one over H * W terms
  lost 100x more accuracy than XLA's own reduction over batch and space). Its VJP broadcasts
  each cotangent back (no reduction).
  """
  return tuple(r.sum((0, 1)) for r in row_sums(*xs))


def row_sums(*xs: jax.Array) -> tuple[jax.Array, ...]:
  """sum over the width (axis 2) of each (B, H, W, C) array, (B, H, C) each, as one multi-output reduction."""
  zero = jnp.zeros((), xs[0].dtype)
  add = lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True))
  return tuple(jax.lax.reduce(xs, (zero,) * len(xs), add, (2,)))


def _channel_sums_fwd(shape, *xs):
  return channel_sums(shape, *xs), None


def _channel_sums_bwd(shape, _, cts):
  return tuple(jnp.broadcast_to(ct, shape) for ct in cts)


channel_sums.defvjp(_channel_sums_fwd, _channel_sums_bwd)


def _statistics(x, epsilon):
  """Mean and flax's fast variance E[x^2] - E[x]^2, from sums of x - K with K = x[0, 0, 0] per channel.

  The same numbers in exact arithmetic; in float32 the shift keeps E[x^2] - E[x]^2 from
  cancelling when a channel's spread is small against its mean (AgileNN's remote predictor
  reads quantised features all near one centroid at the start of training: unshifted, a
  sequential sum lost 18x more accuracy there than XLA's reduction, against float64).
  """
  n = _count(x)
  shift = jax.lax.stop_gradient(x[0, 0, 0])
  d = x - shift
  s1, s2 = channel_sums(x.shape, d, d * d)
  mean_d = s1 / n
  mean = shift + mean_d
  excess = s2 / n - mean_d * mean_d  # flax's fast variance, before the clip at 0
  var = jnp.maximum(0.0, excess)
  return mean, excess, var, jax.lax.rsqrt(var + epsilon)


def _count(x_BHWC) -> int:
  return x_BHWC.shape[0] * x_BHWC.shape[1] * x_BHWC.shape[2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
  x_BHWC: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, batch mean, batch variance) of training-mode BatchNorm over batch and space, as flax computes them."""
  return _batch_norm_fwd(x_BHWC, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
  mean, excess, var, rstd = _statistics(x, epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, scale, mean, excess, rstd)


def _batch_norm_bwd(epsilon, res, cts):
  x, scale, mean, excess, rstd = res
  gy, g_mean, g_var = cts
  n = _count(x)
  centred = x - mean
  sum_g, sum_g_xhat = channel_sums(x.shape, gy, gy * (centred * rstd))
  # jnp.maximum(0, excess)'s derivative: 1 above 0, 1/2 at 0 (JAX's convention), 0 below
  clip = jnp.where(excess > 0, 1.0, jnp.where(excess == 0, 0.5, 0.0)).astype(x.dtype)
  d_var = (-0.5 * rstd * rstd * scale * sum_g_xhat + g_var) * clip
  d_mean = -scale * rstd * sum_g + g_mean
  dx = gy * (rstd * scale) + d_mean / n + d_var * (2.0 / n) * centred
  return dx, sum_g_xhat, sum_g


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` with `batch_norm_train` for float32 NHWC training inputs (see the module)."""

  def uses_fast_path(self, x, use_running_average: bool) -> bool:
    """Whether `batch_norm_train` runs: training mode, a float NHWC input, channels last, scale,
    bias, fast variance, no named axis, a float32 or float64 input whose dtype holds the
    parameters' (float32 parameters of a float64 input are promoted, as flax promotes them), and
    not inside `common.xla_cpu.autodiff_reductions()`."""
    return (
      fused_reductions()
      and not use_running_average
      and self.axis_name is None
      and x.ndim == 4
      and self.axis in (-1, 3)
      and x.dtype in (jnp.float32, jnp.float64)
      and jnp.promote_types(self.param_dtype, x.dtype) == x.dtype
      and self.dtype in (None, x.dtype)
      and self.use_bias
      and self.use_scale
      and self.use_fast_variance
      and self.force_float32_reductions
    )

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """flax.linen.BatchNorm.__call__'s body (flax 0.12), with `batch_norm_train` where it applies."""
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    feature_axes = flax_norm._canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stat_dtype), feature_shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stat_dtype), feature_shape)
    normalize = lambda mean, var: flax_norm._normalize(
      self,
      x,
      mean,
      var,
      reduction_axes,
      feature_axes,
      self.dtype,
      self.param_dtype,
      self.epsilon,
      self.use_bias,
      self.use_scale,
      self.bias_init,
      self.scale_init,
      self.force_float32_reductions,
    )
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
      if not self.force_float32_reductions:
        mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
      return normalize(mean, var)
    if mask is None and self.uses_fast_path(x, use_running_average):
      scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
      bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
      y, mean, var = batch_norm_train(x, scale.astype(x.dtype), bias.astype(x.dtype), self.epsilon)
    else:
      mean, var = flax_norm._compute_stats(
        x,
        reduction_axes,
        dtype=self.dtype,
        axis_name=self.axis_name if not self.is_initializing() else None,
        axis_index_groups=self.axis_index_groups,
        use_fast_variance=self.use_fast_variance,
        mask=mask,
        force_float32_reductions=self.force_float32_reductions,
      )
      y = normalize(mean, var)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
