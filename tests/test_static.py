"""Every kernel variant compiled for real GPUs ahead of time (sm_90, sm_80), and the static
cost report read from its machine code: no GPU needed.

The interpreter runs the kernels' Python, not Triton's compiler: here each variant goes
through the whole pipeline to a cubin, so a kernel that would not build on a GPU fails CI,
and `python -m fastddpm.bench --static`'s figures are checked against what they must be.
"""

import json
import os
import subprocess
import sys

import pytest
from procs import default_signals

from fastddpm.bench import aot
from fastddpm.bench import static as staticcost


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, preexec_fn=default_signals)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def rows():
    return json.loads(_run("import json, fastddpm.bench.static as s; print(json.dumps(s.report()))"))


@pytest.mark.slow
def test_every_variant_compiles_for_sm_90_and_sm_80(rows):
    n = len(aot.variants())
    assert sorted((r["arch"], r["variant"]) for r in rows) == sorted((a, v.name) for a in (90, 80) for v in aot.variants())
    # C x dtype x (q_sample x 2 noises, 11 steps (ddpm and ddpm-learned x 2 noises, ddim, dpm++2m, sde-dpm++2m, dpm++3m,
    # sde-dpm++3m, unipc-3, ipndm-4), 9 guided steps, 2 losses x 2 noises, 2 v losses, randn)
    assert n == 2 * 3 * 29
    for r in rows:
        assert r["instructions"] > 0 and r["common_path"] > 0, r


@pytest.mark.slow
def test_report_figures_are_sane(rows):
    by = {(r["arch"], r["variant"]): r for r in rows}
    for r in rows:
        # bytes per element: what the variant declares is what its SASS loads and stores, give or
        # take one 4-byte scalar a thread (a program's partial sum, stored by one thread)
        n = r["elements_per_thread"]
        assert abs(round(r["sass_bytes_per_element"] * n) - r["bytes_per_element"] * n) <= 4, r["variant"]
        # the common path never exceeds the code, and only skips guarded rare regions
        assert r["common_path"] <= r["instructions"]
        drawn = r["noise"] == "drawn"
        assert (r["mufu_per_element"] >= 1.5) == drawn, r["variant"]  # Box-Muller: log2, sqrt, sin/cos
        if drawn and r["kernel"] != "randn" and "sde-" not in r["variant"] and "/v " not in r["variant"] and "+cfg" not in r["variant"]:
            # (aot builds no explicit form of the SDE step, the guided steps or the v-target loss)
            explicit = by.get((r["arch"], r["variant"].replace("drawn", "explicit")))
            assert explicit is not None and explicit["common_path"] < r["common_path"], r["variant"]
        for gpu, batches in r["predictions"].items():
            for p in batches.values():
                assert p["time_us"] == pytest.approx(max(p["bandwidth_us"], p["issue_us"], p["mufu_us"]))
                assert p["bound"] in ("bandwidth", "issue", "MUFU")


@pytest.mark.slow
def test_register_and_spill_targets_on_every_target(rows):
    for r in rows:
        assert r["registers"] <= staticcost.TARGETS["registers"] and r["spill_bytes"] == 0, r["variant"]


@pytest.mark.slow
def test_the_sampler_step_is_bandwidth_bound_on_h200(rows):
    # The kernel every sampler step runs, in the dtypes a sampler uses: issue and MUFU time
    # at most 0.8 of the bandwidth time (predicted from machine code).
    for r in rows:
        if r["arch"] == 90 and r["kernel"].startswith("step"):
            assert staticcost.meets_targets(r)["issue"], (r["variant"], staticcost.meets_targets(r))


@pytest.mark.slow
def test_i64_stream_words_compile():
    # Triton passes a stream word >= 2**31 as i64: the counter must wrap it, not fail to bitcast.
    code = (
        "import fastddpm.bench.aot as a\n"
        "vs = [v for v in a.variants(channels=(3,), dtypes=('float32',)) if v.noise == 'drawn']\n"
        "print(sum(len(a.compile_variant(v, 90, stream_i64=True).asm['cubin']) > 0 for v in vs))"
    )
    # q_sample, the ddpm, learned-Σ ddpm, SDE-DPM-2M and SDE-DPM-3M steps (plain and guided), both losses for ε and v, randn
    assert int(_run(code)) == 14
