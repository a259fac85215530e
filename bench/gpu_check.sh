#!/usr/bin/env bash
# One prepared GPU check (plan on ~10 minutes of a briefly available CUDA machine, no network):
#   1. install fastgeom against the machine's own torch, CUDA extension built for this GPU;
#   2. pytest -m gpu (fused kernels on CUDA vs reference, Triton on CUDA, logvol on CUDA vs CPU);
#   3. the full ResNet benchmark (and bench/shallow.py if present), the randomized cost/accuracy curve
#      (bench/randomized_path.py --full), each under a timeout;
#   4. results into $OUT (or bench/out) and bench/RESULTS.md.
# Usage: bash bench/gpu_check.sh        (PYTHON=... to pick the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')") || { echo "no CUDA device visible to torch"; exit 1; }
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" || true
export TORCH_CUDA_ARCH_LIST=$ARCH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-$(nproc)}

stamp "install (FASTGEOM_BUILD_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH), no network"
FASTGEOM_BUILD_EXT=1 FASTGEOM_BUILD_CUDA=1 timeout 420 $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . \
  || { stamp "pip install failed; building in place instead";
       FASTGEOM_BUILD_EXT=1 FASTGEOM_BUILD_CUDA=1 timeout 420 $PY setup.py -q build_ext --inplace; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import fastgeom, json; print(json.dumps(fastgeom.info(), default=str, indent=1))" | tee "$OUT/info.json" || true

stamp "pytest -m gpu"
FASTGEOM_TEST_ON_GPU=1 timeout 240 $PY -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
echo "pytest -m gpu rc=$?"

stamp "bench/logvol_resnet.py --full"
timeout 420 $PY bench/logvol_resnet.py --full --points 3 --timeout 100 --json "$OUT/logvol_resnet_gpu.json"
echo "logvol_resnet rc=$?"

if [ -f bench/shallow.py ]; then
  stamp "bench/shallow.py"
  timeout 120 $PY bench/shallow.py --full --out "$OUT" || timeout 120 $PY bench/shallow.py || true
fi

stamp "bench/randomized_path.py --full"
# ResNet-50 32x32, 64-point path: exact reference + randomized budgets, cheapest first; budgets not started
# within --max-seconds are skipped (marked in the table); JSON, figure and the randomized_path_full section of
# RESULTS.md are rewritten after every budget, so a run cut by the timeout keeps what it measured.
timeout 210 $PY bench/randomized_path.py --full --max-seconds 150 --json "$OUT/randomized_path_full.json"
echo "randomized_path rc=$?"
cp bench/img/randomized_path_full.png "$OUT/" 2>/dev/null || true

stamp "write RESULTS.md gpu section"
$PY - "$OUT" <<'PYEOF'
import os, sys
sys.path.insert(0, "bench")
from _results import device_line, write_section
out = sys.argv[1]
junit = os.path.join(out, "pytest_gpu.xml")
summary = "pytest -m gpu: no report"
if os.path.exists(junit):
    import xml.etree.ElementTree as ET
    r = ET.parse(junit).getroot()
    s = r if r.tag == "testsuite" else r.find("testsuite")
    summary = (f"pytest -m gpu: {s.get('tests')} tests, {s.get('failures')} failures, {s.get('errors')} errors, "
               f"{s.get('skipped')} skipped")
write_section("gpu", f"`bash bench/gpu_check.sh` — {device_line()}\n\n{summary}. "
              "ResNet table: section logvol_resnet_gpu (written by bench/logvol_resnet.py --full).")
PYEOF
cp bench/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null || true
stamp "done"
