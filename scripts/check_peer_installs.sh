#!/usr/bin/env bash
# Does this checkout install beside each RL engine's current release and its vLLM extra?
# For each engine: `pip install --dry-run --ignore-installed` of this checkout together with the engine
# (a resolution only: nothing is installed, nothing in .venv changes; pip reads the packages' metadata from
# PyPI), then one line: resolves (with the torch / transformers / vllm it picked) or the conflict.
#
#   bash scripts/check_peer_installs.sh [> benchmarks/results/peer_installs.txt]
#   PY=python3.11 ENGINES="verl[vllm]==0.9.1" bash scripts/check_peer_installs.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-.venv/bin/python}
ENGINES=${ENGINES:-"verl[vllm]==0.9.1 openrlhf[vllm]==0.11.2 trl[vllm]==1.16.0"}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "# pip install --dry-run --ignore-installed $ROOT <engine>  ($(date -u +%Y-%m-%d), $($PY -m pip --version | cut -d' ' -f1-2), Python $($PY -c 'import sys; print(sys.version.split()[0])'), $(uname -m))"
status=0
for engine in $ENGINES; do
  name=${engine%%[*}
  report="$TMP/$name.json"
  # OpenRLHF requires flash-attn==2.8.3, published as a source package whose build imports torch; OpenRLHF's
  # install instructions build it with --no-build-isolation (against the torch already installed), and
  # FLASH_ATTENTION_SKIP_CUDA_BUILD lets its metadata be read without compiling CUDA kernels.
  extra=()
  case $engine in openrlhf*) extra=(--no-build-isolation) ;; esac
  if FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE $PY -m pip install --dry-run --ignore-installed --quiet "${extra[@]}" \
      --report "$report" "$ROOT" "$engine" >"$TMP/$name.out" 2>&1; then
    $PY - "$engine" "$report" <<'EOF'
import json, sys
engine, path = sys.argv[1], sys.argv[2]
got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(path))["install"]}
keys = [k for k in ("alarm", "torch", "transformers", "vllm", "trl", "verl", "openrlhf") if k in got]
print(f"{engine}: resolves ({', '.join(f'{k} {got[k]}' for k in keys)}; {len(got)} packages)")
EOF
  else
    status=1
    why=$(grep -E "ResolutionImpossible|conflict|depends on|No matching|^ERROR" "$TMP/$name.out" | head -3 | tr -s ' \n' ' ')
    echo "$engine: DOES NOT RESOLVE: ${why:-$(tail -1 "$TMP/$name.out")}"
  fi
done
exit $status
