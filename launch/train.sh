#!/usr/bin/env bash
# Run any technique's main on CPU, one GPU, a TPU or several hosts; see `python -m launch.train --help`.
#   launch/train.sh agile -- all --config=agile/configs/quick.py --workdir=runs/agile
#   launch/train.sh coinfer --platform gpu -- init --config=coinfer/configs/quick.py --workdir=runs/c
#   launch/train.sh subnets --multihost --coordinator host0:1234 --num_processes 2 --process_id 0 -- finetune ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ $# -eq 0 ]; then exec "$PY" -m launch.train --help; fi
exec "$PY" -m launch.train "$@"
