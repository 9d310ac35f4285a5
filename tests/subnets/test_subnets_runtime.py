"""The switching runtime: one compiled function per subnetwork, each equal to the sliced model."""

import jax
import numpy as np

from subnets import models, runtime, surgery


def test_runtime_switches_between_compiled_subnets():
  cfg = models.ModelConfig(widths=(6, 8, 8), dw_strides=(2, 1), num_classes=5)
  shape = (8, 8, 3)
  v = models.init_variables(cfg, jax.random.key(0), shape)
  widths = [(2, 3, 4), (4, 5, 8), (6, 8, 8)]
  x = np.random.default_rng(0).uniform(size=(1, *shape)).astype(np.float32)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  rt = runtime.SubnetRuntime(cfg, v, widths, x, mean=mean, std=std)
  assert rt.index == 2
  outs = []
  for i, ws in enumerate(widths):
    rt.switch(i)
    assert rt.index == i
    got = np.asarray(rt(x))
    ref = runtime.predict_fn(cfg.with_widths(ws), mean=mean, std=std)(surgery.slice_variables(v, cfg, ws), x)
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-5, atol=1e-5)
    outs.append(got)
  assert not np.allclose(outs[0], outs[2])
