"""The DQN of Qiu et al. (EMSOFT 2022): an MLP from the metric (and interval) history to Q values.

The token count is not an input: the network outputs Q for every (token state,
action) pair at once. Layout (fixed size, so settings with different (q, p, m)
can be vmapped in one program): outputs [0, S) are Q(n, 0) for n = 0..S-1 and
[S, 2S) are Q(n, 1), with S = max m + 1; entries outside n in [q, m] (keep) and
[p, m] (send) are masked out of the loss and never used. (The original packs
only the valid 2(m+1) - q - p entries.)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """Network settings (the original's flags).

  Attributes:
    nhist1: metrics history: the input holds the last nhist1 + 1 metrics, current first.
    nhist2: interval history: nhist2 + 1 past intervals as inputs (< 0: none).
    nlayers: hidden layers.
    nhidden: units per hidden layer.
  """

  nhist1: int = 95
  nhist2: int = -1
  nlayers: int = 5
  nhidden: int = 64

  @property
  def in_size(self) -> int:
    return self.nhist1 + 1 + max(self.nhist2 + 1, 0)


class QNetwork(nn.Module):
  """Dense(nhidden) + LeakyReLU(0.2), nlayers times, then a linear Dense(2 S); he-uniform kernels."""

  config: DQNConfig
  num_states: int  # S = max m + 1

  @nn.compact
  def __call__(self, x_BxD: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    del train
    init = nn.initializers.he_uniform()
    h = x_BxD
    for i in range(self.config.nlayers):
      h = nn.leaky_relu(nn.Dense(self.config.nhidden, kernel_init=init, name=f"dense{i}")(h), 0.2)
    q = nn.Dense(2 * self.num_states, kernel_init=init, name="out")(h)
    return q, {}


def split_q(q_BxF: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Q(n, keep), Q(n, send)), each [..., S]."""
  s = q_BxF.shape[-1] // 2
  return q_BxF[..., :s], q_BxF[..., s:]


def send_margin_params(params: dict, num_layers: int) -> tuple[list, tuple[jax.Array, jax.Array]]:
  """The QNetwork's parameters with its output layer folded to Q(n, send) - Q(n, keep).

  Returns ([(kernel, bias)] of the hidden layers, (kernel [H, S], bias [S]) of the margin):
  `send_margin` then computes S outputs per row instead of 2 S (the difference of two affine
  maps of the same features is one affine map; float32 rounding can differ at exact ties).
  """
  hidden = [(params[f"dense{i}"]["kernel"], params[f"dense{i}"]["bias"]) for i in range(num_layers)]
  k, b = params["out"]["kernel"], params["out"]["bias"]
  s = k.shape[-1] // 2
  return hidden, (k[:, s:] - k[:, :s], b[s:] - b[:s])


def send_margin(folded: tuple[list, tuple[jax.Array, jax.Array]], x_BxD: jax.Array) -> jax.Array:
  """Q(n, send) - Q(n, keep) for every n ([B, S]) from `send_margin_params`' output."""
  hidden, (k, b) = folded
  h = x_BxD
  for w, c in hidden:
    h = nn.leaky_relu(h @ w + c, 0.2)
  return h @ k + b


def send_table(q_BxF: jax.Array, p) -> jax.Array:
  """Send decision per state: n >= p and Q(n, send) >= Q(n, keep) (ties send, as the original)."""
  q0, q1 = split_q(q_BxF)
  n = jnp.arange(q0.shape[-1])
  return jnp.logical_and(n >= p, q1 >= q0)
