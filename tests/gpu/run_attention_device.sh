#!/bin/bash
# One device session for the CUDA attention: kernel resource usage, the GPU tests,
# compute-sanitizer memcheck on a small run, and the benchmark. Writes under $OUT.
set -u
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/attn-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
(python3 -c "
from bigmodel_native import _native
src = dict(_native.cuda_sources())['attention']
open('/tmp/attn.cubin', 'wb').write(_native.nvrtc_compile_source('attention', src, 90, 'cubin'))
" && cuobjdump --dump-resource-usage /tmp/attn.cubin) > "$OUT/resources.txt" 2>&1 &
(timeout "${MEMCHECK_S:-170}" compute-sanitizer --tool memcheck --print-limit 20 \
    python3 tests/gpu/attention_memcheck.py > "$OUT/memcheck.txt" 2>&1; echo "rc=$?" >> "$OUT/memcheck.txt") &
MC=$!
timeout "${TESTS_S:-200}" python3 -m pytest tests/gpu/test_attention_cuda.py -q -p no:cacheprovider \
    --tb=short -rf ${TESTS_K:+-k "$TESTS_K"} > "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/tests.txt"
tail -25 "$OUT/tests.txt"
wait $MC
tail -8 "$OUT/memcheck.txt"
grep -A3 "attn_fwd_mma\|attn_bwd_mma" "$OUT/resources.txt" | grep -o "Function [a-z_0-9]*\|REG:[0-9]*\|STACK:[0-9]*\|SHARED:[0-9]*\|LOCAL:[0-9]*" | paste -sd' ' | sed 's/Function/\nFunction/g'
if [ "${NCU:-0}" = 1 ]; then
    timeout "${NCU_S:-120}" ncu --kernel-name regex:'attn_(fwd|bwd)_mma' --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
        python3 tests/gpu/attention_profile.py > "$OUT/ncu.txt" 2>&1
    echo "ncu rc=$?" >> "$OUT/ncu.txt"
    grep -E "attn_|Throughput|Duration|Achieved Occupancy|Registers|Stall|Theoretical Occ|Bank|rc=" "$OUT/ncu.txt" | cut -c1-150 | head -60
fi
if [ "${BENCH:-1}" = 1 ]; then
    timeout "${BENCH_S:-150}" python3 -m pytest benches/bench_gpu_attention.py -q -s -p no:cacheprovider \
        > "$OUT/bench.txt" 2>&1
    echo "bench rc=$?" >> "$OUT/bench.txt"
    grep -E "TFLOP|torch_over|rc=|Error|assert" "$OUT/bench.txt" | cut -c1-400 | tail -12
    cp benches/results/gpu-attention.json "$OUT/" 2>/dev/null
fi
if [ -n "${EXTRA_TESTS:-}" ]; then
    timeout "${EXTRA_S:-120}" python3 -m pytest $EXTRA_TESTS -q -p no:cacheprovider --tb=short -rf \
        > "$OUT/extra_tests.txt" 2>&1
    echo "extra tests rc=$?" >> "$OUT/extra_tests.txt"
    tail -6 "$OUT/extra_tests.txt"
fi
