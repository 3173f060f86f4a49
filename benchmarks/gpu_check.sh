#!/usr/bin/env bash
# The one GPU job: the device tests on CUDA (compiled Triton kernels, no interpreter),
# then the full benchmark. Writes under benchmarks/results/<date>-<gpu>/ and,
# when $OUT is set (the device tool), copies the same files there. Target: < 8 minutes.
#
# On a machine whose python3 already has torch and triton and reaches no registry:
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; nothing to do" >&2
    exit 2
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1

gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
dir="benchmarks/results/$(date -u +%Y-%m-%d)-${gpu}"
mkdir -p "$dir"
python3 - > "$dir/env.json" <<'PY'
import json, platform, subprocess, torch, triton
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
print(json.dumps({
    "gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
    "python": platform.python_version(), "commit": commit,
}, indent=1))
PY

# The tests whose device matters: every kernel (the v and x0 losses too), the generator, compile, bad input and
# the graphed Sampler, on CUDA tensors. The rest (schedule, U-Net, trainer, data, the
# CPU bench smoke run) runs on the CPU whatever the machine, as in CI.
status=0
FASTDDPM_TEST_DEVICE=cuda timeout 210 python3 -m pytest -q -p no:cacheprovider \
    tests/test_q_sample.py tests/test_reverse_step.py tests/test_loss.py tests/test_loss_targets.py tests/test_philox.py \
    "tests/test_guidance.py::test_fused_guided_step_equals_the_reference_combination" \
    tests/test_noise_stats.py tests/test_compile.py tests/test_validation.py tests/test_cuda.py \
    "tests/test_samplers.py::test_fused_chains_equal_diffusers_triton" \
    "tests/test_solvers.py::test_fused_chains_equal_the_reference_triton" \
    "tests/test_solvers.py::test_a_step_by_hand_turns_the_ring_itself" \
    2>&1 | tee "$dir/tests.txt"
status=${PIPESTATUS[0]}

timeout 270 python3 -m fastddpm.bench --json "$dir/bench.json" 2>&1 | tee "$dir/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ -n "${OUT:-}" ]; then cp "$dir"/* "$OUT"/; fi
echo "gpu_check: results in $dir (tests exit $status)"
exit "$status"
