#!/usr/bin/env bash
# One visit to a lent GPU machine for the Triton kernels (issue #7), as one prepared command:
#
#     bash benchmarks/gpu_visit.sh            # through the device tool: run(command=..., timeout_s=540)
#
# It installs nothing. The device image's own python3 already holds what this needs (torch with
# CUDA, triton, numba, numpy, rich, pytest, hypothesis; checked against that image's package list),
# and fedpress is imported from src/ (its codec path has no other dependency at import time). The
# kernels were also run, here in Triton's interpreter, against the image's triton 3.6.0: same
# results as the pinned 3.9.0.
#
# Order: versions, then the byte check and timings (benchmarks/gpu_kernels.py, exits 1 on a byte
# mismatch and retries itself with FEDPRESS_TRITON_DIV=div_rn if the inline PTX division fails to
# build), then the CUDA test. Everything lands in $OUT (the device tool brings it back).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fedpress-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
$PY -c 'import sys, torch, triton, numpy, numba; print(sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available(), "triton", triton.__version__, "numpy", numpy.__version__,
"numba", numba.__version__)' 2>&1 | tee -a "$OUT/env.txt"

timeout 420 $PY benchmarks/gpu_kernels.py "$@" 2>&1 | tee "$OUT/gpu_kernels.log"
bench=$?
timeout 90 $PY -m pytest tests/kernels/test_triton.py -k cuda -p no:cacheprovider -rs 2>&1 \
    | tee "$OUT/pytest_cuda.log"
tests=$?
echo "gpu_kernels.py rc=$bench, pytest -k cuda rc=$tests" | tee -a "$OUT/env.txt"
exit $(( bench || tests ))
