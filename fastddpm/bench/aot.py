"""Every kernel variant, compiled for a GPU ahead of time, on any machine (no GPU needed).

The Triton interpreter runs the kernels' Python, not Triton's compiler; here each variant goes
through the whole pipeline to PTX and a cubin for a named target (ptxas ships in Triton's
wheel), the way `triton.jit` would compile it on that GPU for the given arguments: pointer
operands 16-byte aligned, integers that divide by 16 marked so, as Triton's launcher does.
Used by the GPU-compile tests and by `python -m fastddpm.bench --static`. Must run in a
process without TRITON_INTERPRET (the interpreter replaces the compiler).
"""

import itertools
from dataclasses import dataclass, field

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TARGETS = (90, 80)  # sm_90 (H100, H200), sm_80 (A100)


@dataclass(frozen=True)
class Variant:
    """One compiled form of one kernel, and what it moves per element."""

    kernel: str  # q_sample, step, loss_fwd, loss_bwd, randn, words
    dtype: str  # the storage dtype of the images it reads and writes (the step's state is fp32)
    noise: str  # "drawn" (in-kernel Philox), "explicit" (a noise tensor), "none"
    C: int  # channels (a compile-time constant)
    detail: str = ""  # the step's flavour (ddpm, ddim, dpm++2m) and the like
    pointers: dict = field(default_factory=dict, compare=False)
    constexprs: dict = field(default_factory=dict, compare=False)
    ints: dict = field(default_factory=dict, compare=False)  # int arguments' value kinds: "i32", "i64", 16 (divisible), 1
    reads: tuple = ()  # bytes per element read, one entry per operand
    writes: tuple = ()

    @property
    def name(self) -> str:
        return f"{self.kernel}{'/' + self.detail if self.detail else ''} {self.dtype} {self.noise} C={self.C}"

    @property
    def heavy(self) -> bool:
        """History beside drawn noise or a guided pair, or more than one slot: the launch runs it
        2 pixels a thread (kernels.step.heavy)."""
        from ..kernels.step import heavy

        return heavy(self.constexprs.get("NH", 0), bool(self.constexprs.get("DRAW")), bool(self.constexprs.get("GUIDED")))

    def bytes_per_element(self) -> int:
        return sum(self.reads) + sum(self.writes)

    def fn(self):
        from ..kernels import TRITON_KERNELS

        return TRITON_KERNELS[self.kernel.split("_")[0] if self.kernel.startswith("loss") else self.kernel]


def _size(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def variants(channels=(3, 4), dtypes=tuple(DTYPES), cl: bool = True) -> list:
    """The variants that run in practice: images channels-last (cl), as the Sampler and the
    Trainer lay them out on a GPU; each storage dtype; drawn and explicit noise."""
    out = []
    for C, dt in itertools.product(channels, dtypes):
        d, s = DTYPES[dt], _size(dt)
        geo = dict(C=C, G=(C + 3) // 4)
        for noise in ("drawn", "explicit"):
            explicit = noise == "explicit"
            out.append(Variant(
                "q_sample", dt, noise, C,
                pointers=dict(x0_ptr=f"*{d}", n_ptr=f"*{d}", o_ptr=f"*{d}", t_ptr="*i64", seed_ptr="*i64", tab_ptr="*fp32"),
                constexprs=dict(geo, CL_X0=cl, CL_N=cl, CL_O=cl, HAS_NOISE=explicit),
                reads=(s,) + ((s,) if explicit else ()), writes=(s,)))
            # the Sampler's step: fp32 state in place, the model's ε̂ and its next input in `dt`
            # (name, draws noise, history slots, stores ε̂, weighs ε̂ directly, learned Σ: reads v from a 2C output)
            for detail, draw, nh, hist_eps, eps_term, learned in (
                    ("ddpm", True, 0, False, False, False), ("ddim", False, 0, False, True, False),
                    ("dpm++2m", False, 1, False, False, False), ("sde-dpm++2m", True, 1, False, False, False),
                    ("dpm++3m", False, 2, False, False, False), ("sde-dpm++3m", True, 2, False, False, False),
                    ("unipc-3", False, 3, False, False, False), ("ipndm-4", False, 3, True, True, False),
                    ("ddpm-learned", True, 0, False, False, True)):
                has_h = nh > 0
                if explicit and draw and has_h:
                    continue  # the SDE solver's explicit-noise form adds nothing the others do not show
                if explicit and not draw:
                    continue  # deterministic steps draw nothing either way
                # classifier-free guidance: the unconditional output read too (the guided ε̂ never written)
                for guided in (False, True) if not explicit else (False,):
                    out.append(Variant(
                        "step", dt, noise if draw else "none", C, detail + ("+cfg" if guided else ""),
                        pointers=dict(x_ptr="*fp32", e_ptr=f"*{d}", eu_ptr=f"*{d}", z_ptr="*fp32", h_ptr="*fp32",
                                      o_ptr="*fp32", oh_ptr="*fp32", l_ptr=f"*{d}", flag_ptr="*i64", k_ptr="*i64",
                                      ts_ptr="*i64", seed_ptr="*i64", tab_ptr="*fp32"),
                        constexprs=dict(geo, CL_X=cl, CL_E=cl, CL_EU=cl, CL_Z=cl, CL_H=cl, CL_O=cl, CL_OH=cl, CL_L=cl,
                                        CLIP=False, DRAW=draw and not explicit, HAS_NOISE=explicit, NH=nh, HIST_EPS=hist_eps,
                                        HAS_LOWP=dt != "float32", CHECK=True, ROW_IS_T=False,
                                        EPS_TERM=eps_term, GUIDED=guided, LEARNED=learned, CE=2 * C if learned else C),
                        reads=(4, s) + ((s,) if learned else ()) + ((s,) if guided else ()) + ((4,) if explicit else ())
                        + (4,) * nh,
                        writes=(4,) + ((s,) if dt != "float32" else ()) + ((4,) if has_h else ())))
            for kernel, backward in (("loss_fwd", False), ("loss_bwd", True)):
                # the ε target, and (drawn noise) the v target, which also reads x_0
                for pred, detail in ((0, ""), (1, "v")) if not explicit else ((0, ""),):
                    out.append(Variant(
                        kernel, dt, noise, C, detail,
                        pointers=dict(e_ptr=f"*{d}", n_ptr=f"*{d}", x0_ptr=f"*{d}", g_ptr=f"*{d}", part_ptr="*fp32",
                                      t_ptr="*i64", seed_ptr="*i64", w_ptr="*fp32", tab_ptr="*fp32"),
                        constexprs=dict(geo, CL_E=cl, CL_N=cl, CL_X0=cl, CL_G=cl, HAS_NOISE=explicit, HAS_W=False,
                                        BACKWARD=backward, PRED=pred),
                        reads=(s,) + ((s,) if explicit else ()) + ((s,) if pred else ()), writes=((s,) if backward else ())))
        out.append(Variant("randn", dt, "drawn", C, pointers=dict(out_ptr=f"*{d}", seed_ptr="*i64", t_ptr="*i64"),
                           constexprs=dict(geo, CL=cl), writes=(s,)))
    return out


def compile_variant(v: Variant, arch: int, block: int = None, num_warps: int = None, stream_i64: bool = False):
    """Triton's CompiledKernel of `v` for sm_<arch> (PTX, cubin, metadata), with the launch
    geometry a 32x32-or-larger image gets unless block/num_warps say otherwise."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..kernels import MAX_REGISTERS, geometry

    L = geometry(1, v.C, 32 * 32)
    block, num_warps = block or L.block, num_warps or L.num_warps(v.heavy)
    fn = v.fn()
    v = Variant(**{**v.__dict__, "constexprs": {**v.constexprs, "BLOCK": block, "TILES": L.tiles}})
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in v.pointers:
            sig[name] = v.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are aligned
        elif name in v.constexprs:
            sig[name] = "constexpr"
        elif name == "stream" and stream_i64:
            sig[name] = "i64"  # a stream word >= 2**31 arrives as i64
        else:
            sig[name] = "i32"
            if name in ("HW", "SLOT"):  # 32x32 and 64x64 images: the pixel count (and B C H W) divides by 16
                attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {(fn.arg_names.index(k),): val for k, val in v.constexprs.items()}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    # fp fusion on, said rather than left to Triton 3.9's default (the same, with a warning each compile)
    options = {"num_warps": num_warps, "maxnreg": MAX_REGISTERS, "enable_fp_fusion": True}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
