"""fp32 -> storage dtype, rounded to nearest even on every backend.

Compiled Triton converts fp32 -> bf16/fp16 rounding to nearest even (one F2FP instruction
for two values). The interpreter truncates to bf16, so the CPU tests would check another
rounding than the GPU runs: under the interpreter bf16 is rounded by hand (four integer
ops), to the same bits.
"""

import triton
import triton.language as tl

from ._checks import INTERPRET

if INTERPRET:

    @triton.jit
    def to_storage(v, ty: tl.constexpr):
        # v: fp32 block; ty: the pointer's element type
        if ty == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)  # round half to even on bit 16
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return v.to(ty)

else:

    @triton.jit
    def to_storage(v, ty: tl.constexpr):
        return v.to(ty)
