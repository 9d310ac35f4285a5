"""Command line: `python -m branching.main count|calibrate|search|train|export|run --config ...`.

  count      --config published/mi/R-50-CD.yaml [--image_size 224]   MACs and params (model / pycls)
  calibrate  [--phone mi] [--workdir runs/branching_cal]             cost model vs published latencies, LOMO
  search     --config published/mi/R-50-C.yaml --processors cpu,dsp [--out R-50-CD-searched.yaml]
  train      --config branching/configs/quick.py --workdir runs/branching_quick
  export     --config branching/configs/quick.py --workdir runs/branching_quick   (trains or resumes first)
  run        --config branching/configs/quick.py --workdir runs/branching_quick   (everything + report.md)

YAML configs are looked up as given, then under branching/configs/ and
branching/configs/published/. Flags only: the work is in the library.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from common import cli
from common import config as config_lib
from common.errors import ConfigError


def _py_config(path: str, overrides: list[str]):
  p = Path(path)
  if not p.exists() or p.suffix != ".py":
    raise ConfigError(
      f"--config {path}: give a Python config file with get_config(), e.g. branching/configs/quick.py"
    )
  spec = importlib.util.spec_from_file_location("branching_user_config", p)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  return config_lib.apply_overrides(c, overrides)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m branching.main", description=__doc__.splitlines()[0])
  p.add_argument("command", choices=("count", "calibrate", "search", "train", "export", "run"))
  p.add_argument("--config", default="branching/configs/quick.py", help="YAML (count/search) or .py config")
  p.add_argument("--workdir", default="runs/branching")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--phone", default="mi")
  p.add_argument("--processors", default="cpu,dsp")
  p.add_argument("--alpha", type=float, default=0.4)
  p.add_argument("--beta", type=float, default=0.8)
  p.add_argument("--gamma", type=float, default=0.8)
  p.add_argument("--out", default=None, help="search: where to write the YAML")
  p.add_argument(
    "--set", action="append", default=[], help="override a .py config key: --set train.num_epochs=2"
  )
  return p


def _main(argv: list[str]) -> int:
  a = _parser().parse_args(argv)
  from branching import config as bcfg
  from branching import costmodel, flops, pipeline, search
  from common import report

  if a.command == "count":
    c = bcfg.load(a.config)
    r = flops.count(c, a.image_size)
    print(json.dumps({"config": c.name, "image_size": a.image_size, **r}, indent=2))
    print(
      f"{c.name} @{a.image_size}: {r['macs'] / 1e9:.3f} GMACs, {r['params'] / 1e6:.3f} M params as the model runs; "
      f"{r['pycls_macs'] / 1e9:.3f} GMACs, {r['pycls_params'] / 1e6:.3f} M as pycls reports"
    )
    return 0
  if a.command == "calibrate":
    rep = report.Report("NN-Stretch cost model calibration", a.workdir)
    out = pipeline.calibration_section(rep, a.phone)
    table = costmodel.default_table(a.phone)
    rep.heading("Coefficients (ms per unit)")
    rep.table(["processor", *costmodel.FEATURES], [[d, *v] for d, v in table.coef.items()])
    rep.write()
    report.write_json(Path(a.workdir) / "calibration.json", {"errors": out, "coef": table.coef})
    print(json.dumps(out, indent=2))
    print(f"wrote {Path(a.workdir) / 'report.md'}")
    return 0
  if a.command == "search":
    c = bcfg.load(a.config)
    procs = tuple(p.strip() for p in a.processors.split(",") if p.strip())
    table = costmodel.default_table(a.phone)
    log: list = []
    found = search.stretch(
      c, procs, table=table, alpha=a.alpha, beta=a.beta, gamma=a.gamma, image_size=a.image_size, log=log
    )
    out = Path(a.out or Path(a.workdir) / f"{found.name}.yaml")
    bcfg.save(found, out)
    dev, single = search.best_single(c, procs, table, image_size=a.image_size)
    pred = costmodel.predict(found, table, image_size=a.image_size)
    for e in log:
      print(json.dumps(e))
    print(
      f"best single processor {dev}: {single:.2f} ms; searched: {pred:.2f} ms ({single / pred:.2f}x); wrote {out}"
    )
    return 0
  config = _py_config(a.config, a.set)
  if a.command == "train":
    from branching import train

    res = train.train_and_evaluate(config, a.workdir)
    print(
      json.dumps(
        {k: {m: v[m] for m in ("name", "ema_accuracy", "accuracy", "macs", "params")} for k, v in res.items()}
      )
    )
    return 0
  if a.command == "export":
    from branching import export as bexport
    from branching import train
    from common import export as cexport

    res = train.train_and_evaluate(config, a.workdir)
    for role, r in res.items():
      size = config.data.image_size
      tfl = bexport.export_model(r["model"], r["variables"], size, mean=r["mean"], std=r["std"])
      path = cexport.write_atomic(Path(a.workdir) / "exports" / f"{role}.tflite", tfl)
      segs = bexport.export_segments(r["model"], r["variables"], size, mean=r["mean"], std=r["std"])
      for seg in segs:
        for j, b in enumerate(seg.branches):
          cexport.write_atomic(
            Path(a.workdir) / "exports" / f"{role}_segments" / f"{seg.name}_branch{j}.tflite", b
          )
      print(f"wrote {path} ({len(tfl)} bytes) and {sum(len(s.branches) for s in segs)} segment flatbuffers")
    return 0
  out = pipeline.run(config, a.workdir)
  print(json.dumps(out, indent=2, default=str))
  return 0


def main() -> None:
  cli.run_main(lambda: _main(sys.argv[1:]))


if __name__ == "__main__":
  main()
