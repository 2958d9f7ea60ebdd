#!/usr/bin/env bash
# The GPU check of issue 17: device-sensitive tests on cuda, one quickstart-sized alarm PPO run in bf16, and
# one step of alarm PPO vs TRL GRPO on the same GPU; JSON + Markdown under benchmarks/results/gpu/.
# No network and no downloaded weights needed (a random model of SmolLM2-135M's shape is timed).
#
#   bash benchmarks/gpu_check.sh                  # on a machine with a CUDA GPU (≤ 10 minutes)
#   bash benchmarks/gpu_check.sh --cpu            # the CPU fallback: same sections, shortened
#   bash benchmarks/gpu_check.sh --wheels DIR     # first install the wheels in DIR (offline) into a temp dir,
#                                                 # e.g. pydantic, pydantic-core, trl, datasets when missing
# Other arguments go to benchmarks/gpu_check.py (--name NAME, --skip tests|ppo|trl).
#
# The lent H200 machine (Python 3.12; torch, transformers, peft, accelerate, pytest, requests, rich, pyyaml,
# pyarrow present) lacked, as of 2026-11: pydantic pydantic-core annotated-types typing-inspection (alarm
# itself), pysbd (alarm.text), trl datasets dill multiprocess (TRL). Without them the check reports what is
# missing and skips what needs it. To run everything, fetch them here and carry the folder:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pysbd==0.3.4 \
#     trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19    # the versions tested here
#   bash benchmarks/gpu_check.sh --wheels .whl
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels)
      WHEELS="$2"; shift 2
      SITE="${TMPDIR:-/tmp}/alarm-gpu-check-site"
      echo "[gpu_check] installing the wheels in $WHEELS into $SITE (no index, no network)"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
        || echo "[gpu_check] some wheels did not install; the check reports what is still missing"
      export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}";;
    *) ARGS+=("$1"); shift;;
  esac
done
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --signal=INT 590 "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
rc=$?
if [[ $rc -eq 124 || $rc -eq 130 ]]; then echo "[gpu_check] stopped at the 10-minute limit; the files hold the sections that finished"; fi
exit $rc
