"""Deployment of the split model: device part per setup (TFLite int8 + TFLite Micro C array,
and float TFLite), server part per setup (ONNX), and their top-1 parity with JAX.

The float device graph is stem conv -> BN (the setup's statistics) -> ReLU6 -> first c channels
-> per-image min-max quantisation to b bits (dequantised, so the exported output is the tensor the
server reads). The int8 device graph stops before the quantiser (TFLite's int8 DIV rejects the
data-dependent divisor); the device then applies `compress.encode_np`, which gives the packed codes
and the two floats per channel that go on the wire, and the server `compress.decode_np`. The server graph zero-pads the c channels back to the stem width (equal to slicing
the decoder's input weights) and runs the rest.

For the runtime (docs/deploy.md) every setup is also written as one model of a Triton-style
repository, exports/repository/coinfer_<setup>/1/model.onnx + config.pbtxt: the server graph
behind an ONNX wire decoder (`common.serving.wire`), so it takes the packed b-bit codes and the
per-channel ranges the device sends, and a stock Triton server can serve the directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from coinfer import compress
from coinfer import models as models_lib
from coinfer import train as T
from common import export as export_lib
from common import micro
from common.errors import ExportError
from common.serving import repository, wire


def split_fns(ctx: T.Context, variables: dict, index: int):
  """(device_fn, server_fn, full_fn) of setup `index` on raw [0, 1] images."""
  setup = ctx.setups[index]
  v = {"params": variables["params"], "batch_stats": models_lib.select_stats(variables["batch_stats"], index)}
  model = type(ctx.model)(dataclasses.replace(ctx.model.config, shifted_depthwise=False))  # grouped depthwise
  stem = model.config.stem_channels
  c, b = jnp.int32(setup.channels), jnp.int32(setup.bits)

  inv_std = (1.0 / np.asarray(ctx.std)).astype(np.float32)  # TFLite int8 DIV rejects constant divisors

  def device_fn(x, quantize=True):
    z = model.apply(
      v,
      (jnp.asarray(x, jnp.float32) - jnp.asarray(ctx.mean, jnp.float32)) * inv_std,
      c,
      b,
      train=False,
      quantize=quantize,
      method=lambda m, *a, **k: m.device(*a, **k),
    )
    return z[..., : setup.channels]

  def server_fn(z):
    z = jnp.pad(z, ((0, 0), (0, 0), (0, 0), (0, stem - setup.channels)))
    return model.apply(v, z, train=False, method=lambda m, *a, **k: m.server(*a, **k))[0]

  def full_fn(x):
    return model.apply(v, T.prep(ctx, x), c, b, train=False)[0]

  return device_fn, server_fn, full_fn


def _export_int8(ctx: T.Context, device_fn, x1, setup, out: Path, result: dict, parity_images: int,
                 ram_bytes: int) -> bytes | None:  # fmt: skip
  """The int8 device part (up to ReLU6) checked under TFLite Micro in the device's RAM and written
  with its C array; its figures (or `int8_error`, nothing written) go into `result`."""
  rep = [ctx.train_ds.images[i : i + 1] for i in range(min(200, len(ctx.train_ds)))]
  try:
    # TFLite int8 DIV rejects the quantiser's data-dependent divisor, so the int8 graph ends at
    # ReLU6 and the device quantises with `compress.encode_np` (a few lines of C on an MCU).
    features = lambda x: device_fn(x, quantize=False)  # noqa: E731
    dev8 = export_lib.to_tflite(
      features, x1, int8=True, representative_data=rep, name=f"device8_{setup.name}"
    )
    # TFLite Micro must run it in the device's RAM, else it is refused (int8_error, nothing written).
    mcu = micro.check_int8(
      dev8, ctx.test_ds.images[:parity_images], ram_bytes=ram_bytes,
      name=f"coinfer device part {setup.name} (int8)", ram_key="export.target_ram_bytes",
    )  # fmt: skip
  except ExportError as e:
    result["int8_error"] = str(e)[:300]
    return None
  export_lib.write_atomic(out / "device_int8.tflite", dev8)
  c_arr = export_lib.to_c_array(dev8, f"coinfer_device_{setup.name.lower()}", out)
  result["device_int8_bytes"] = c_arr["model_bytes"]
  result |= mcu.as_dict("device_int8_micro_")
  return dev8


def export_setup(
  ctx: T.Context,
  variables: dict,
  index: int,
  out_dir: Path,
  *,
  int8: bool,
  parity_images: int,
  ram_bytes: int = micro.DEFAULT_TARGET_RAM_BYTES,
) -> dict:
  """Writes exports/<setup>/{device_int8.tflite, device_int8 C array, device.tflite, server.onnx}; returns parity."""
  setup = ctx.setups[index]
  out = Path(out_dir) / setup.name
  device_fn, server_fn, full_fn = split_fns(ctx, variables, index)
  h, w, ch = ctx.test_ds.image_shape
  x1 = np.zeros((1, h, w, ch), np.float32)
  z1 = np.asarray(device_fn(x1))
  dev = export_lib.to_tflite(device_fn, x1, name=f"device_{setup.name}")
  export_lib.write_atomic(out / "device.tflite", dev)
  srv = export_lib.to_tflite(server_fn, z1, name=f"server_{setup.name}")
  onnx_model = export_lib.tflite_to_onnx(srv)
  export_lib.save_onnx(onnx_model, out / "server.onnx")
  z_shape = tuple(int(d) for d in z1.shape[1:])
  served = wire.with_decoder(onnx_model, z_shape, setup.bits)
  model_name = f"coinfer_{setup.name}"
  repository.write_model(Path(out_dir) / "repository", model_name, served)
  result = {
    "setup": setup.name,
    "channels": setup.channels,
    "bits": setup.bits,
    "model": model_name,
    "split_shape": list(z_shape),
    "device_tflite_bytes": len(dev),
  }
  dev8 = _export_int8(ctx, device_fn, x1, setup, out, result, parity_images, ram_bytes) if int8 else None
  x = ctx.test_ds.images[:parity_images]
  ref = np.asarray(full_fn(x)).argmax(-1)
  z = export_lib.run_tflite(dev, x)[0]
  logits = export_lib.run_onnx(onnx_model, z)[0]
  result["top1_agreement"] = float((logits.argmax(-1) == ref).mean())
  # the repository model fed with what goes on the wire (float device part, re-encoded)
  sess = repository.session(served)
  wired = [sess.run(None, _wire_feeds(zi[None], setup.bits))[0] for zi in z]
  result["wire_top1_agreement"] = float((np.concatenate(wired).argmax(-1) == ref).mean())
  if "device_int8_bytes" in result:  # int8 device part feeding the float server
    f8 = export_lib.run_tflite(dev8, x)[0]
    z8 = compress.decode_np(*compress.encode_np(f8, setup.bits), setup.bits)
    result["int8_top1_agreement"] = float((export_lib.run_onnx(onnx_model, z8)[0].argmax(-1) == ref).mean())
  result["payload_max_abs_err"] = float(np.max(np.abs(z - np.asarray(device_fn(x)))))
  return result


def _wire_feeds(z: np.ndarray, bits: int) -> dict:
  payload, ranges = wire.encode(z, bits)
  return {"PAYLOAD": np.frombuffer(payload, np.uint8), "RANGES": ranges}


def export_all(ctx: T.Context, variables: dict, workdir: Path) -> dict:
  cfg = ctx.config
  names = {s.name: i for i, s in enumerate(ctx.setups)}
  results = []
  for c, b in cfg.export.setups:
    if f"N{c}Q{b}" not in names:
      raise ExportError(f"config.export.setups has {[c, b]}, which is not a configured setup")
    results.append(
      export_setup(
        ctx,
        variables,
        names[f"N{c}Q{b}"],
        Path(workdir) / "exports",
        int8=cfg.export.int8,
        parity_images=cfg.export.parity_images,
        ram_bytes=micro.target_ram_bytes(cfg, "export.target_ram_bytes"),
      )
    )
  return {"setups": results}
