"""A static cost report of the kernels, read from their machine code: no GPU needed.

Every kernel variant (fastddpm.aot) is compiled for sm_90 and sm_80 with the ptxas in
Triton's wheel and disassembled with its nvdisasm. From the SASS and the resource usage:

- registers and spills (cuobjdump: STACK/LOCAL bytes) and the occupancy they allow;
- instructions by class (memory, FP32, special-function, integer, control);
- the **common path**: the instructions one thread executes from the entry to EXIT when every
  value is finite and every index in range. These kernels have no loops; the only
  conditional branches guard rare events (the non-finite flag's atomic, a slow-path call),
  so the common path is the straight line from entry to EXIT with each region a conditional
  branch skips *and* that holds an atomic, a call or a trap left out, NOP padding left out;
- bytes per element: declared by the variant and checked against its LDG/STG widths;
- a predicted time on named GPUs as max(bandwidth time, issue time, MUFU time), naming the
  bound: bytes / bandwidth; warp instructions / (SMs x 4 schedulers x clock); special-function
  lanes / (SMs x 16 x clock). This is a lower bound from machine code (no latency, no tail
  effects, no launch overhead): a prediction, not a measurement.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass

from . import aot

# Published specifications (SXM parts; boost clock). Issue: 4 schedulers per SM, one warp
# instruction each per clock; MUFU: 16 lanes per SM per clock (NVIDIA's CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table, compute capability 8.0/9.0).
GPUS = {
    "H200": dict(arch=90, bandwidth_gbs=4800, sms=132, clock_ghz=1.98, schedulers=4, sfu_lanes=16),
    "H100": dict(arch=90, bandwidth_gbs=3350, sms=132, clock_ghz=1.98, schedulers=4, sfu_lanes=16),
    "A100": dict(arch=80, bandwidth_gbs=2039, sms=108, clock_ghz=1.41, schedulers=4, sfu_lanes=16),
}
BATCHES = {"cifar": (1024, 3, 32, 32), "latent": (64, 4, 64, 64)}
MAX_WARPS_PER_SM = 64  # sm_80 and sm_90
REGS_PER_SM = 65536
TARGETS = dict(issue_over_bandwidth=0.8, registers=64, spills=0)

CLASSES = (
    ("memory", re.compile(r"^(LDG|STG|LDS|STS|LDL|STL|LD|ST|LDC|ULDC|ATOM|ATOMG|ATOMS|RED|LDSM|MEMBAR|ERRBAR|CGAERRBAR|CCTL)\b")),
    ("special", re.compile(r"^MUFU\b")),
    ("fp32", re.compile(r"^(FADD|FMUL|FFMA|FMNMX|FSEL|FSETP|FCHK|FSWZADD|HADD2|HMUL2|HFMA2|HMNMX2|HSETP2|F2F|F2FP|FRND)\b")),
    ("control", re.compile(r"^(BRA|BRX|JMP|EXIT|CALL|RET|BAR|BSSY|BSYNC|WARPSYNC|NOP|YIELD|BMOV|BPT|KILL|DEPBAR)\b")),
)
COLD = re.compile(r"^(ATOM|ATOMG|RED|CALL|BPT|TRAP)")
INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
TARGET_LABEL = re.compile(r"`?\(?\.?(L_x_\d+)\)?`?")


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def klass(op: str) -> str:
    for name, pattern in CLASSES:
        if pattern.match(op):
            return name
    return "integer"  # IMAD, IADD3, LOP3, SHF, ISETP, LEA, PRMT, SEL, MOV, I2F, SHFL, S2R, R2UR, uniform ops


def parse_sass(text: str):
    """[(address, predicate, opcode, operands)] and {label: address} of one kernel's SASS."""
    instrs, labels, pending = [], {}, []
    for line in text.splitlines():
        m = re.match(r"^\.(L_x_\d+):", line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            instrs.append((addr, (m.group(2) or "").strip(), m.group(3), m.group(4)))
    return instrs, labels


def common_path(instrs, labels) -> list:
    """The (predicate, opcode) of the straight line from the entry to the first EXIT, less the
    regions that a conditional forward branch skips when they hold an atomic, a call or a trap."""
    out, i, guarded = [], 0, False
    while i < len(instrs):
        addr, pred, op, args = instrs[i]
        pred = pred or ("after @P EXIT" if guarded else "")  # a mask the compiler turned into an early exit
        if op.startswith("BRA") and pred:
            m = TARGET_LABEL.search(args)
            target = labels.get(m.group(1)) if m else None
            skipped = [ins for ins in instrs if target is not None and addr < ins[0] < target]
            if target is not None and target > addr and any(COLD.match(ins[2]) for ins in skipped):
                out.append((pred, op))  # the branch itself is executed; the guarded region is not
                i = next(j for j, ins in enumerate(instrs) if ins[0] >= target)
                continue
        if not op.startswith("NOP"):
            out.append((pred, op))
        if op.startswith("EXIT"):
            if not pred:
                break
            guarded = True
        i += 1
    return out


def bytes_touched(path) -> int:
    """Image bytes one thread loads and stores: the masked (predicated) LDG/STG of its common
    path, by width. The unmasked ones are the program's own scalars (its sample's t and seed,
    its table row, a partial sum): O(B), left out as in every byte count here."""
    total = 0
    for pred, op in path:
        if pred and op.startswith(("LDG", "STG")):
            width = re.search(r"\.(U8|S8|U16|S16|64|128)(\.|$)", op)
            total += {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}[width.group(1)] if width else 4
    return total


@dataclass
class Row:
    variant: str
    kernel: str
    dtype: str
    noise: str
    C: int
    arch: int
    registers: int
    spill_bytes: int
    instructions: int
    classes: dict
    common_path: int  # instructions a thread executes
    mufu_common: int
    elements_per_thread: int
    instr_per_element: float
    mufu_per_element: float
    bytes_per_element: int  # declared by the variant
    sass_bytes_per_element: float  # read from the LDG/STG of the common path
    warps: int
    occupancy: float  # resident warps / 64
    predictions: dict  # gpu -> batch -> {bandwidth_us, issue_us, mufu_us, time_us, bound}


def analyze(v: aot.Variant, arch: int, block: int, warps: int) -> Row:
    k = aot.compile_variant(v, arch, block=block, num_warps=warps)
    cubin = k.asm["cubin"]
    path = f"/tmp/fastddpm-{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        sass = subprocess.run([_bin("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    spills = int(re.search(r"STACK:(\d+)", res).group(1)) + int(re.search(r"LOCAL:(\d+)", res).group(1))
    instrs, labels = parse_sass(sass)
    ops = [op for _, _, op, _ in instrs]
    classes = Counter(klass(op) for op in ops if not op.startswith("NOP"))
    path = common_path(instrs, labels)
    common = [op for _, op in path]
    lanes = min(v.C, 4)  # the channels a program writes: one group of up to four
    per_thread = (block // (32 * warps)) * lanes
    regs_per_warp = -(-regs * 32 // 256) * 256
    resident = min(MAX_WARPS_PER_SM, (REGS_PER_SM // regs_per_warp) // warps * warps)
    row = Row(
        variant=v.name, kernel=v.kernel if not v.detail else f"{v.kernel}/{v.detail}", dtype=v.dtype, noise=v.noise, C=v.C,
        arch=arch, registers=regs, spill_bytes=spills, instructions=len(ops), classes=dict(classes),
        common_path=len(common), mufu_common=sum(op.startswith("MUFU") for op in common), elements_per_thread=per_thread,
        instr_per_element=len(common) / per_thread, mufu_per_element=sum(op.startswith("MUFU") for op in common) / per_thread,
        bytes_per_element=v.bytes_per_element(), sass_bytes_per_element=bytes_touched(path) / per_thread,
        warps=warps, occupancy=resident / MAX_WARPS_PER_SM, predictions={},
    )
    for gpu, spec in GPUS.items():
        if spec["arch"] != arch:
            continue
        row.predictions[gpu] = {}
        for name, (B, C, H, W) in BATCHES.items():
            if C != v.C:
                continue
            row.predictions[gpu][name] = predict(row, spec, B, C, H * W, block)
    return row


def predict(row: Row, spec: dict, B: int, C: int, HW: int, block: int) -> dict:
    programs = B * ((C + 3) // 4) * -(-HW // block)
    warp_instr = programs * row.warps * row.common_path
    clock = spec["clock_ghz"] * 1e9
    t_bw = B * C * HW * row.bytes_per_element / (spec["bandwidth_gbs"] * 1e9)
    t_issue = warp_instr / (spec["sms"] * spec["schedulers"] * clock)
    t_mufu = programs * row.warps * row.mufu_common * 32 / (spec["sms"] * spec["sfu_lanes"] * clock)
    bound = max((t_bw, "bandwidth"), (t_issue, "issue"), (t_mufu, "MUFU"))
    return dict(bandwidth_us=1e6 * t_bw, issue_us=1e6 * t_issue, mufu_us=1e6 * t_mufu, time_us=1e6 * bound[0], bound=bound[1],
                issue_over_bandwidth=max(t_issue, t_mufu) / t_bw if t_bw else None)


def _work(args):
    i, arch = args
    from ..kernels import geometry

    v = aot.variants()[i]
    L = geometry(1, v.C, 32 * 32)  # the launch a 32x32 (or larger) image gets
    return asdict(analyze(v, arch, L.block, L.num_warps(v.heavy)))


def report(archs=aot.TARGETS, jobs: int = None) -> list:
    """Analyze every variant for every target, in worker processes without the interpreter."""
    import multiprocessing as mp

    n = len(aot.variants())
    tasks = [(i, a) for a in archs for i in range(n)]
    env_interp = os.environ.pop("TRITON_INTERPRET", None)  # workers start without it: the real compiler
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs or min(len(tasks), os.cpu_count() or 1)) as pool:
            return pool.map(_work, tasks)
    finally:
        if env_interp is not None:
            os.environ["TRITON_INTERPRET"] = env_interp


def meets_targets(r: dict, gpu: str = "H200") -> dict:
    """Which of the issue's targets a row meets on `gpu` (sm_90 rows)."""
    preds = r["predictions"].get(gpu, {})
    ratio = max((p["issue_over_bandwidth"] for p in preds.values()), default=None)
    return dict(issue=ratio is not None and ratio <= TARGETS["issue_over_bandwidth"], registers=r["registers"] <= TARGETS["registers"],
                spills=r["spill_bytes"] <= TARGETS["spills"], ratio=ratio)


def print_report(rows: list, out=sys.stdout) -> None:
    out.write("static cost of every kernel variant, read from SASS (predictions from machine code, not GPU measurements)\n")
    out.write("common path: instructions one thread executes, finite values, rare-event branches (atomic, call, trap) not taken\n")
    for arch in sorted({r["arch"] for r in rows}, reverse=True):
        gpu = {90: "H200", 80: "A100"}[arch]
        out.write(f"\nsm_{arch}  (predicted on {gpu}: CIFAR batch 1024x3x32x32 for C=3, latent batch 64x4x64x64 for C=4)\n")
        out.write(f"{'kernel':<21}{'dtype':<9}{'noise':<9}{'C':>2}{'regs':>5}{'spill':>6}{'occ':>5}{'SASS':>6}{'path':>6}"
                  f"{'instr/el':>9}{'MUFU/el':>8}{'B/el':>5}{'pred us':>9}  bound      issue/bw  targets\n")
        for r in rows:
            if r["arch"] != arch:
                continue
            batch = "cifar" if r["C"] == 3 else "latent"
            p = r["predictions"][gpu][batch]
            ok = meets_targets(r, gpu)
            flags = "ok" if all(ok[k] for k in ("issue", "registers", "spills")) else ",".join(k for k in ("issue", "registers", "spills") if not ok[k])
            out.write(f"{r['kernel']:<21}{r['dtype'][:8]:<9}{r['noise']:<9}{r['C']:>2}{r['registers']:>5}{r['spill_bytes']:>6}"
                      f"{100 * r['occupancy']:>4.0f}%{r['instructions']:>6}{r['common_path']:>6}{r['instr_per_element']:>9.1f}"
                      f"{r['mufu_per_element']:>8.2f}{r['bytes_per_element']:>5}{p['time_us']:>9.1f}  {p['bound']:<10}"
                      f"{p['issue_over_bandwidth']:>8.2f}  {flags if arch == 90 else ''}\n")
    out.write("\nGPUs (published specs): " + "; ".join(f"{g} {s['bandwidth_gbs']} GB/s, {s['sms']} SMs, {s['clock_ghz']} GHz"
                                                    for g, s in GPUS.items()) + "\n")


def main(json_path=None) -> list:
    rows = report()
    print_report(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(schema="fastddpm.static/1", gpus=GPUS, batches=BATCHES, targets=TARGETS, rows=rows), f, indent=1)
    return rows
