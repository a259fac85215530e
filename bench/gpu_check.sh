#!/usr/bin/env bash
# The prepared GPU check for a briefly lent CUDA machine (no network; 15 minutes of device time in all,
# at most 10 minutes per command), in stages so that each device call stays under 10 minutes:
#   build   compile fastgeom._C with the CUDA kernels for this GPU, in place, against the machine's own
#           torch (skipped when an up-to-date build is already there)                        (<= 240 s)
#   test    pytest -m gpu: fused kernels on CUDA vs their references, Triton on CUDA, the linearised
#           and streamed engines on CUDA vs CPU                                                (<= 150 s)
#   bench   logvol --full (ResNet-34/50 through the public API: time, peak memory, roofline),
#           vjp_chunk, shallow and curvature --full on CUDA, randomized_path --full
#           (cost/accuracy curve)                                                             (<= 530 s)
# Every result goes to $OUT (default bench/out) and to bench/RESULTS.md as the step finishes, so a step
# cut by its timeout keeps what it measured.
# Usage:  bash bench/gpu_check.sh build test      (device call 1, timeout_s 420)
#         bash bench/gpu_check.sh bench           (device call 2, timeout_s 540)
#         bash bench/gpu_check.sh                 (all stages, where time allows)
# PYTHON=... picks the interpreter.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/out}
STAGES=${*:-build test bench}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
want() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }

stamp "device (stages: $STAGES)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')") || { echo "no CUDA device visible to torch"; exit 1; }
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" || true
export TORCH_CUDA_ARCH_LIST=$ARCH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if want build; then
  so=$(ls fastgeom/_C*.so 2>/dev/null | head -1)
  if [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -type f | head -1)" ] \
     && $PY -c "import fastgeom._ext as e, sys; sys.exit(0 if e.ext.with_cuda else 1)" 2>/dev/null; then
    stamp "build: $so is up to date (CUDA)"
  else
    stamp "build: setup.py build_ext --inplace (FASTGEOM_BUILD_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH), no network"
    FASTGEOM_BUILD_EXT=1 FASTGEOM_BUILD_CUDA=1 timeout 240 $PY setup.py -q build_ext --inplace
    echo "build rc=$?"
  fi
  $PY -c "import fastgeom, json; print(json.dumps(fastgeom.info(), default=str, indent=1))" | tee "$OUT/info.json" || true
fi

if want test; then
  stamp "pytest -m gpu"
  FASTGEOM_TEST_ON_GPU=1 timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
  echo "pytest -m gpu rc=$?"
  $PY - "$OUT" <<'PYEOF'
import os, sys
sys.path.insert(0, "bench")
from _results import device_line, write_section
out = sys.argv[1]
junit = os.path.join(out, "pytest_gpu.xml")
summary = "pytest -m gpu: no report (timed out or failed to start)"
if os.path.exists(junit):
    import xml.etree.ElementTree as ET
    r = ET.parse(junit).getroot()
    s = r if r.tag == "testsuite" else r.find("testsuite")
    summary = (f"pytest -m gpu: {s.get('tests')} tests, {s.get('failures')} failures, {s.get('errors')} errors, "
               f"{s.get('skipped')} skipped")
write_section("gpu", f"`bash bench/gpu_check.sh` — {device_line()}\n\n{summary}. Benchmark tables: sections "
              "logvol_full, vjp_chunk_gpu, shallow-cuda and randomized_path_full.")
PYEOF
fi

if want bench; then
  stamp "bench/logvol.py --full"
  timeout 230 $PY bench/logvol.py --full --points 2 --rounds 1 --timeout 110 --json "$OUT/logvol_full.json"
  echo "logvol rc=$?"

  stamp "bench/vjp_chunk.py on CUDA"
  timeout 60 $PY bench/vjp_chunk.py --device cuda --K 256 --pairs 5 --json "$OUT/vjp_chunk_gpu.json"
  echo "vjp_chunk rc=$?"

  stamp "bench/shallow.py --device cuda"
  timeout 50 $PY bench/shallow.py --device cuda --repeat 3 --hd-points 200
  echo "shallow rc=$?"

  stamp "bench/curvature.py --full"; timeout 90 $PY bench/curvature.py --full --repeat 2 --points 16 --json "$OUT/curvature_full_cuda.json"; echo "curvature rc=$?"

  stamp "bench/randomized_path.py --full"
  # ResNet-50 32x32, 64-point path: exact reference + randomized budgets, cheapest first; budgets not started
  # within --max-seconds are skipped (marked in the table); JSON, figure and the randomized_path_full section
  # of RESULTS.md are rewritten after every budget, so a run cut by the timeout keeps what it measured.
  timeout 100 $PY bench/randomized_path.py --full --max-seconds 70 --json "$OUT/randomized_path_full.json"
  echo "randomized_path rc=$?"
  cp bench/img/randomized_path_full.png "$OUT/" 2>/dev/null || true
fi

cp bench/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null || true
stamp "done"
