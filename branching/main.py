"""NN-Stretch command line: `edgeinfer branching <step> --config=branching/configs/quick.py --workdir=DIR`.

  edgeinfer branching count --network=published/mi/R-50-CD.yaml --image_size=224 --workdir=runs/branching
  edgeinfer branching calibrate --phone=mi --workdir=runs/branching_cal
  edgeinfer branching search --network=published/mi/R-50-C.yaml --processors=cpu,dsp --out=R-50-CD-s.yaml \
      --workdir=runs/branching
  edgeinfer branching run --config=branching/configs/quick.py --workdir=runs/branching_quick

Network YAMLs are looked up as given, then under branching/configs/ and branching/configs/published/.
The flags below override `config.search` (the search, count and calibrate settings of every step);
`edgeinfer branching --help` lists the steps (branching/pipeline.py).
"""

from __future__ import annotations

from absl import flags

from branching import pipeline
from common import app

flags.DEFINE_string("network", None, "network YAML for count/search (default: config.search.model)")
flags.DEFINE_integer("image_size", None, "input size for count/search (default: config.search.image_size)")
flags.DEFINE_string("phone", None, "phone whose published latencies calibrate the cost model (default: mi)")
flags.DEFINE_list(
  "processors", None, "search: processors, the first merges (default: config.search.processors)"
)
flags.DEFINE_float("alpha", None, "search: main branch keeps >= alpha of the stage's MACs (default 0.4)")
flags.DEFINE_float("beta", None, "search: all branches keep >= beta of the stage's MACs (default 0.8)")
flags.DEFINE_float("gamma", None, "search: each branch's latency <= gamma x best single (default 0.8)")
flags.DEFINE_string("out", None, "search: where to write the YAML (default: <workdir>/<name>.yaml)")
FLAGS = flags.FLAGS
NAMES = (*pipeline.SETTINGS, "out")
if __name__ == "__main__":  # `python -m branching.main`: list them under this module in --help too
  for _name in NAMES:
    FLAGS.register_flag_by_module("branching.main", FLAGS[_name])


def _overrides() -> dict:
  return {name: FLAGS[name].value for name in NAMES}


APP = app.App(
  "branching",
  pipeline.STEPS,
  default_config="branching/configs/quick.py",
  validate=lambda config: pipeline.validate(config, _overrides()),
  preflight=lambda config, workdir: pipeline.preflight(config, workdir, _overrides()),
  context=lambda config, workdir: pipeline.Run(config, workdir, _overrides()),
  doc=__doc__.splitlines()[0],
)


def main(argv=None) -> None:
  app.run(APP, argv)


if __name__ == "__main__":
  main()
