"""Every technique's training step on all visible devices vs the same step on one device.

Run by tests/common/test_common_sharding.py in a subprocess with 8 simulated CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`); prints one
`RESULT <name> <max abs error>` line per step and fails on the first mismatch.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from common import sharding
from launch.tiny_steps import BUILDERS, batch_of, copy

TOL = 2e-5  # float reassociation of the gradient all-reduce (float32)


def max_err(a, b) -> float:
  errs = [
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return max(errs)


def check(name: str, step: sharding.Step, args: tuple, *, rows_sharded: bool = False, steps: int = 2):
  """Runs `steps` steps both ways from the same state; compares states, metrics and shardings."""
  plain = jax.jit(step.__wrapped__)
  one, many = copy(args[0]), copy(args[0])
  for _ in range(steps):
    one, m_one = plain(one, *args[1:])
    many, m_many = step(many, *args[1:])
    assert step.mesh is not None and step.mesh.devices.size == jax.device_count(), name
  err = max(max_err(one, many), max_err(m_one, m_many))
  print("RESULT", name, err, flush=True)
  assert err <= TOL, (name, err)
  # the state: replicated on (or, for offload's rows, split over) all 8 devices
  for leaf in jax.tree.leaves(many):
    assert len(leaf.sharding.device_set) == jax.device_count(), (name, leaf.sharding)
    if rows_sharded:
      assert leaf.sharding.spec == PartitionSpec(sharding.DATA_AXIS), (name, leaf.sharding)
      assert leaf.addressable_shards[0].data.shape[0] == leaf.shape[0] // jax.device_count()
    else:
      assert leaf.sharding.is_fully_replicated, (name, leaf.sharding)
  # the compiled program: batch arguments split on axis 0, the rest replicated
  compiled = step.lower(many, *args[1:]).compile()
  shardings = compiled.input_shardings[0]
  for i, tree in enumerate(shardings):
    for s in jax.tree.leaves(tree):
      want = PartitionSpec(sharding.DATA_AXIS) if i in step.batch_argnums else PartitionSpec()
      assert s.spec == want, (name, i, s)


def uneven_batch():
  from common import classifier, models
  from common.errors import ConfigError

  model = models.SmallCNN(widths=(4,), num_classes=3)
  tx = optax.sgd(0.1)
  state = classifier.init_state(model, tx, jax.random.key(0), (8, 8, 3))
  step, _ = classifier.make_steps(model, tx, mean=0.5, std=0.25)
  try:
    step(state, batch_of(12, 8, 3), jax.random.key(1))
  except ConfigError as e:
    assert "12" in str(e) and "8 devices" in str(e), e
    print("RESULT uneven", e, flush=True)
  else:
    raise AssertionError("a batch of 12 over 8 devices was accepted")


def run(name: str) -> None:
  if name == "uneven":
    uneven_batch()
    return
  step, args, rows_sharded = BUILDERS[name]()
  check(name, step, args, rows_sharded=rows_sharded)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  for name in sys.argv[1:] or [*BUILDERS, "uneven"]:
    run(name)
  print("ALL OK")
