"""The bench's report: the printed table and the sampler plot."""

import sys
from pathlib import Path

NOT_ON_CPU = ("not measured on a CPU: no copy-bandwidth or matmul rate (no GPU), no CUDA graph capture, "
              "no NVML energy; the columns that need them read '-'")


def _f(v, fmt: str, width: int) -> str:
    return f"{v:{width}{fmt}}" if isinstance(v, (int, float)) and v is not None else f"{'-':>{width}}"


def print_report(rep: dict, out=None) -> None:
    out = out or sys.stdout
    d, c = rep["device"], rep["config"]
    out.write(f"fastddpm.bench on {d['name']}  (torch {rep['env']['torch']}, triton {rep['env']['triton']})\n")
    out.write(f"config: U-Net {c['unet']} ({c['unet_params'] / 1e6:.2f} M parameters, {c['image']} images), sampler batches "
              f"{c['batches']}, {c['steps']} timed steps; kernel shapes {c['kernel_shapes']}\n")
    for note in rep["notes"]:
        out.write(f"note: {note}\n")
    if d.get("copy_gbs"):
        out.write(f"copy bandwidth {d['copy_gbs']:.0f} GB/s measured"
                  + (f", {d['theoretical_bandwidth_gbs']:.0f} GB/s theoretical" if d.get("theoretical_bandwidth_gbs") else "")
                  + (f"; bf16 matmul {d['matmul_tflops']:.0f} TFLOP/s measured" if d.get("matmul_tflops") else "") + "\n")
    if rep["kernels"]:
        out.write("\nkernels                                     median ms     GB/s  of copy\n")
        if rep["device"].get("cpu"):
            out.write("(fused*: on a CPU the kernels run their torch twin, whose addressed Philox draw is compiled, the "
                      "elementwise update eager; the reference draws with torch.randn (the randn rows: the draw alone), "
                      "and its loss reads a stored ε, where the fused loss draws ε in its forward pass (and keeps m - y "
                      "for the backward): compare it with the eager loss plus a randn. The Triton kernels run on CUDA.)\n")
        for r in rep["kernels"]:
            frac = f"{100 * r['frac_copy_bw']:6.1f}%" if r.get("frac_copy_bw") else f"{'-':>7}"
            impl = "fused*" if r["impl"] == "fused" and rep["device"].get("cpu") else r["impl"]
            name = f"{r['op']:<12} {impl:<8} {r['dtype']:<8} {'x'.join(map(str, r['shape'])):<14}"
            out.write(f"{name} {r['median_ms']:9.4f} {r['gbs']:8.2f}  {frac}\n")
    if rep["sampler"]:
        out.write("\nsampler (ms/step; images/s of a full 1000-step run)   U-Net alone   fastddpm   reference   diffusers     MFU\n")
        for r in rep["sampler"]:
            mfu = f"{100 * r['mfu']:6.1f}%" if r.get("mfu") else f"{'-':>7}"
            out.write(f"batch {r['batch']:<5} ms/step                          {_f(r['unet_ms'], '.3f', 11)} {_f(r['sampler_ms'], '.3f', 10)} "
                      f"{_f(r['reference_ms'], '.2f', 11)} {_f(r.get('diffusers_ms'), '.2f', 11)} {mfu}\n")
            out.write(f"{'':11} images/s                         {_f(r['unet_images_per_s'], '.3g', 11)} {_f(r['sampler_images_per_s'], '.3g', 10)} "
                      f"{_f(r['reference_images_per_s'], '.3g', 11)} {_f(r.get('diffusers_images_per_s'), '.3g', 11)}\n")
            capture = f"capture {r['sampler_capture_s']:.2f} s" if r.get("sampler_capture_s") else "capture -"
            out.write(f"{'':11} warm-up (compile) {r['sampler_compile_s']:.1f} s, {capture}\n")
            out.write(f"{'':11} fastddpm over the U-Net alone: {r['sampler_over_unet']:.3f}x\n")
            if r.get("sampler_compiled_ms") is not None:
                out.write(f"{'':11} compiled (compile=True; the update fused into the step's graph): {r['sampler_compiled_ms']:.3f} "
                          f"ms/step against {r['unet_compiled_ms']:.3f} for the U-Net compiled alone = "
                          f"{r['sampler_compiled_over_unet']:.3f}x (compile {r['sampler_compiled_compile_s']:.1f} s and "
                          f"{r['unet_compiled_setup_s']:.1f} s, not timed)\n")
            if r.get("guided_ms") is not None:
                out.write(f"{'':11} guided w=3 (class-conditional): {r['guided_ms']:.3f} ms/step against "
                          f"{r['guided_unet_2b_ms']:.3f} for the U-Net alone on 2B = {2 * r['batch']} "
                          f"({r['guided_overhead_ms']:+.3f}; unguided {r['sampler_ms'] - r['unet_ms']:+.3f} over it on B)\n")
            for mrow in r.get("methods", []):
                name = mrow["method"] + (f"-{mrow['options']['order']}" if "order" in mrow.get("options", {}) else "")
                out.write(f"{'':11} {name:<13} {mrow['steps']:>5} steps: {mrow['ms_per_step']:9.3f} ms/step "
                          f"({mrow['overhead_ms']:+.3f} over the U-Net)  {mrow['images_per_s']:.3g} images/s\n")
    for r in rep["train"]:
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] is not None else "-"
        out.write(f"\ntrain step {r['impl']:<9} batch {r['batch']}: {r['images_per_s']:.3g} images/s, peak {mem}")
    for r in rep.get("loader", []):
        bound = f"; the train step {r['train_step_images_per_s']:.3g} images/s: the {r['bound']} is the bound" \
            if r["bound"] else ""
        out.write(f"\nloader {r['source']}, {r['workers']} workers, batch {r['batch']}: {r['images_per_s']:.3g} images/s{bound}")
    out.write("\n")


def plot(rows: list, path: Path, title: str = ""):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    batches = [r["batch"] for r in rows]
    for key, label in (("sampler", "fastddpm Sampler"), ("unet", "U-Net alone (floor)"), ("reference", "reference"), ("diffusers", "diffusers")):
        ys = [r.get(f"{key}_images_per_s") for r in rows]
        if all(y is not None for y in ys):
            ax.plot(batches, ys, marker="o", label=label)
            if len(rows) == 1:  # one batch size: say the value, a lone dot says little
                ax.annotate(f"{ys[0]:.3g}", (batches[0], ys[0]), textcoords="offset points", xytext=(6, 0), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="batch (images)", ylabel="images/s (1000-step run)")
    ax.xaxis.set_major_locator(FixedLocator(batches))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in batches])
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
