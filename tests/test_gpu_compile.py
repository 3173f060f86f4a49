"""Every kernel variant compiled for real GPUs, ahead of time, on a machine without one.

The interpreter runs the kernels' Python; it does not run Triton's compiler. Here each
variant (storage dtypes, explicit or addressed noise, clipping, the second output,
forward and backward loss, weights) goes through the whole pipeline to PTX and a cubin
for Hopper (sm_90, the H100/H200 we measure on) and Ampere (sm_80), so a kernel that
would not compile on a GPU fails CI here.
"""

import itertools
import json
import os
import subprocess
import sys

import pytest

DT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _compile(fn, pointers: dict, constexprs: dict, target):
    import triton
    from triton.compiler import ASTSource

    sig = {}
    for name in fn.arg_names:
        sig[name] = pointers.get(name) or ("constexpr" if name in constexprs else "i32")
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=target, options={"num_warps": 4})


def _variants():
    from fastddpm.kernels import loss, noise, noising, step

    for dt, has_noise in itertools.product(DT, (False, True)):
        d = DT[dt]
        yield "q_sample", noising._q_sample_kernel, dict(x0_ptr=f"*{d}", n_ptr=f"*{d}", o_ptr=f"*{d}", t_ptr="*i64",
                                                        seed_ptr="*i64", tab_ptr="*fp32"), dict(NC=9, HAS_NOISE=has_noise, BLOCK=1024)
        for clip, lowp in ((False, True), (True, False)):
            yield "reverse_step", step._step_kernel, dict(x_ptr="*fp32", e_ptr=f"*{d}", z_ptr=f"*{d}", o_ptr="*fp32", l_ptr=f"*{d}",
                                                         t_ptr="*i32", seed_ptr="*i64", tab_ptr="*fp32"), \
                dict(NC=9, CLIP=clip, HAS_NOISE=has_noise, HAS_LOWP=lowp, BLOCK=1024)
        for backward in (False, True):
            yield "loss", loss._loss_kernel, dict(e_ptr=f"*{d}", n_ptr=f"*{d}", g_ptr=f"*{d}", part_ptr="*fp32", t_ptr="*i64",
                                                 seed_ptr="*i64", w_ptr="*fp32"), \
                dict(HAS_NOISE=has_noise, HAS_W=not has_noise, BACKWARD=backward, BLOCK=256)
    for d in DT.values():
        yield "randn", noise._randn_kernel, dict(out_ptr=f"*{d}", seed_ptr="*i64", t_ptr="*i64"), dict(BLOCK=1024)
    yield "words", noise._words_kernel, dict(out_ptr="*i64", seed_ptr="*i64", t_ptr="*i64"), dict(BLOCK=512)


def compile_all(arch: int) -> list:
    """Run in a process without the interpreter: compile every variant for sm_<arch>."""
    from triton.backends.compiler import GPUTarget

    out = []
    for name, fn, pointers, constexprs in _variants():
        k = _compile(fn, pointers, constexprs, GPUTarget("cuda", arch, 32))
        ptx = k.asm["ptx"]
        out.append(dict(kernel=name, constexprs=constexprs, cubin_bytes=len(k.asm["cubin"]),
                        philox=ptx.count("mul.hi.u32"), ptx_lines=len(ptx.splitlines())))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80], ids=lambda a: f"sm_{a}")
def test_every_kernel_compiles_to_a_cubin(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    code = f"import json, test_gpu_compile as m; print(json.dumps(m.compile_all({arch})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(__file__), timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 3 * 2 * 5 + 3 + 1  # dtypes x noise x (q, 2 steps, 2 losses) + randn x 3 + words
    for r in results:
        assert r["cubin_bytes"] > 0, r
        # every kernel that draws noise runs Philox: 10 rounds of 2 mul.hi each
        draws = r["kernel"] in ("randn", "words") or not r["constexprs"].get("HAS_NOISE")
        assert (r["philox"] >= 20) == draws, r
