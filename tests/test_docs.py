"""The README's and docs/'s code blocks cannot rot: every Python and shell block is run on this CPU
(the fastddpm commands and Python blocks in this process, torchrun's launches as processes),
in order, each page in its own scratch folder (quality.md in generation.md's, whose samples it
evaluates), with the substitutions below; a block marked
`<!-- docs-test: check (why) -->` (a GPU's job, data not on this machine, an install, hours of
CPU) is not run, and every fastddpm module, function, command and flag it names must exist.

Substitutions (sizes for a GPU or for hours, made small; the command is otherwise as written):
    train      --steps N -> --steps 2 (4 with --resume), --batch-size 4 unless given smaller,
               --sample-every 0 (no sample grid)
    generate   --n N -> --n 130 (more than the shipped feature networks' 128 dimensions),
               --steps N -> --steps 5 for N > 5
    Python     batch=N -> batch=4 for N >= 100, device="cuda" -> device="cpu"; the names a block takes as
               given (a diffusers U-Net, a scheduler, x0, t, seeds, ...) are defined first (PRELUDE)
    data.md    my_photos/ (16 random PNGs) and unet.json (a tiny U-Net) are written first
"""

import argparse
import ast
import builtins
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*docs-test:\s*(\w+)\s*(\([^)]*\))?\s*-->\s*\n)?```(bash|python)\n(.*?)```", re.S)
COMMANDS = ("train", "generate", "eval", "bench", "pretrained", "tune")


def blocks(page: Path) -> list:
    """(kind, code, mark, reason) of every fenced bash / python block of a page, in order."""
    return [(m.group(3), m.group(4), m.group(1) or "run", (m.group(2) or "").strip("()"))
            for m in BLOCK.finditer(page.read_text())]


def test_every_block_is_fenced_as_bash_or_python_and_every_mark_is_known():
    for page in PAGES:
        text = page.read_text()
        fences = re.findall(r"^```(\S*)", text, re.M)
        opened = fences[0::2]
        assert all(f in ("bash", "python") for f in opened), f"{page.name}: a block fenced {opened}"
        for m in re.finditer(r"<!--\s*docs-test:\s*(\w+)\s*(\([^)]*\))?", text):
            assert m.group(1) == "check" and m.group(2), f"{page.name}: a docs-test mark needs 'check (why)': {m.group(0)}"
    assert sum(len(blocks(p)) for p in PAGES) >= 25


# ---------------------------------------------------------------------- shell commands
def commands(code: str) -> list:
    """Each command of a shell block as argv lists (continuations joined, comments dropped, && split)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        while argv:
            cut = argv.index("&&") if "&&" in argv else len(argv)
            out.append(argv[:cut])
            argv = argv[cut + 1:]
    return [c for c in out if c]


def fastddpm_command(argv):
    """(command, its arguments) for `python -m fastddpm.X ...` / `torchrun ... -m fastddpm.X ...`, else None."""
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and argv[i + 1].startswith("fastddpm"):
            mod = argv[i + 1]
            if mod == "fastddpm":
                return argv[i + 2], argv[i + 3:]
            return mod.split(".", 1)[1], argv[i + 2:]
    return None


_HELP = {}


def help_text(command: str) -> str:
    """The command's --help (argparse's), every flag it takes."""
    if command not in _HELP:
        mod = importlib.import_module(f"fastddpm.{command}")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            mod.main(["--help"])
        text = buf.getvalue()
        if command == "pretrained":  # subcommands: their flags too
            for sub in ("export", "export-diffusers"):
                b = io.StringIO()
                with contextlib.redirect_stdout(b), pytest.raises(SystemExit):
                    mod.main([sub, "--help"])
                text += b.getvalue()
        _HELP[command] = text
    return _HELP[command]


def extras() -> set:
    src = (ROOT / "setup.py").read_text()
    return set(re.findall(r'^\s+"([\w-]+)": \[', src[src.index("extras_require"):], re.M))


def check_command(argv, where: str) -> None:
    """Every fastddpm command, flag, extra and repository file the command names exists."""
    fc = fastddpm_command(argv)
    if fc is not None:
        command, args = fc
        assert command in COMMANDS, f"{where}: python -m fastddpm.{command} is not a command"
        text = help_text(command)
        for a in args:
            flag = a.split("=", 1)[0]
            if re.fullmatch(r"--[a-z][\w-]*", flag):  # (a flag's value, e.g. --model-flags "--image_size 64", is not one)
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{where}: {command} has no {flag}"
        return
    if argv[:2] == ["pip", "install"]:
        for a in argv[2:]:
            m = re.fullmatch(r'-e|\.?\[([\w,-]+)\]|"?\.\[([\w,-]+)\]"?', a)
            names = (m.group(1) or m.group(2)) if m and (m.group(1) or m.group(2)) else ""
            for extra in filter(None, names.split(",")):
                assert extra in extras(), f"{where}: setup.py has no extra {extra!r}"
        return
    for a in argv:
        if a.startswith(("benchmarks/", "tests/", ".ci/")):
            assert (ROOT / a).exists(), f"{where}: {a} is not in the repository"


def test_every_shell_block_names_what_exists():
    for page in PAGES:
        for i, (kind, code, mark, _) in enumerate(blocks(page)):
            if kind == "bash":
                for argv in commands(code):
                    check_command(argv, f"{page.name} block {i}")


def test_the_readmes_test_command_is_cis():
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python3 -m venv")]
    readme = [c for k, c, _, _ in blocks(ROOT / "README.md") if k == "bash" and "pytest" in c]
    assert len(ci) == 1 and readme and readme[0].strip() == ci[0].strip()
    install = [c for k, c, _, _ in blocks(ROOT / "docs" / "install.md") if k == "bash"]
    assert [c.strip() for c in install] == [c.strip() for k, c, _, _ in blocks(ROOT / "README.md")
                                            if k == "bash" and c.startswith("python3 -m venv")]


def substitute(argv: list) -> list:
    command, args = fastddpm_command(argv)
    argv = list(argv)

    def set_flag(flag, value, only_if_larger=False):
        if flag in argv:
            i = argv.index(flag)
            if not only_if_larger or int(argv[i + 1]) > int(value):
                argv[i + 1] = value
        else:
            argv.extend([flag, value])

    if command == "train":
        set_flag("--steps", "4" if "--resume" in argv else "2")
        set_flag("--batch-size", "4", only_if_larger=True)
        set_flag("--sample-every", "0")
    if command == "generate":
        if "--n" in argv:
            set_flag("--n", "130")
        if "--steps" in argv:
            set_flag("--steps", "5", only_if_larger=True)
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--master_port", "29561", *argv[1:]]
    return argv


# ---------------------------------------------------------------------- Python blocks
PRELUDE = """
import torch, diffusers, fastddpm
from fastddpm import Sampler
diffusers_unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
    block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
model = fastddpm.UNet.from_diffusers(diffusers_unet)
schedule = fastddpm.Schedule.linear()
scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
betas = scheduler.betas
x0 = torch.rand(4, 1, 8, 8) * 2 - 1
t = torch.tensor([10, 200, 500, 999])
seeds = torch.arange(4)
x = torch.randn(4, 1, 8, 8); eps_hat = torch.randn(4, 1, 8, 8); x_bf16 = torch.empty_like(x, dtype=torch.bfloat16)
_plan = fastddpm.Plan.build(schedule, "ddim", steps=10)  # a one-step table: a multistep one also takes h=
rows, timesteps, k = _plan.table("cpu"), _plan.timesteps_on("cpu"), torch.zeros(4, dtype=torch.long)
"""


def python_names(code: str) -> list:
    """fastddpm.a.b chains and `from fastddpm... import x` names of a block, to check they exist."""
    tree = ast.parse(code)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastddpm"):
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Attribute):
            chain, n = [], node
            while isinstance(n, ast.Attribute):
                chain.append(n.attr)
                n = n.value
            if isinstance(n, ast.Name) and n.id == "fastddpm":
                out.append(("fastddpm", ".".join(reversed(chain))))
    return out


def check_python(code: str, where: str) -> None:
    for module, name in python_names(code):
        obj = importlib.import_module(module)
        for part in name.split("."):
            if not hasattr(obj, part):
                obj = importlib.import_module(f"{obj.__name__}.{part}")  # a submodule not imported by its package
            else:
                obj = getattr(obj, part)


def two_column_names(code: str) -> set:
    """Calls in a block that is not Python as written (before / after columns): every fastddpm
    kernel it calls must exist."""
    import fastddpm.kernels as K

    called = set(re.findall(r"\b([a-z_][a-z0-9_]*)\(", code))
    return {c for c in called if c in ("q_sample", "eps_mse_loss", "coef_table", "reverse_step", "sampler_step",
                                       "min_snr_weights")} - set(K.__all__)


def test_every_python_block_names_what_exists():
    for page in PAGES:
        for i, (kind, code, mark, _) in enumerate(blocks(page)):
            if kind != "python":
                continue
            where = f"{page.name} block {i}"
            try:
                ast.parse(code)
            except SyntaxError:
                assert mark == "check", f"{where}: not valid Python and not marked check"
                assert two_column_names(code) == set(), where
                continue
            check_python(code, where)


def shrink_python(code: str) -> str:
    code = re.sub(r"\bbatch=\d{3,}", "batch=4", code)  # a GPU's batch (1024); 64 runs as written
    return code.replace('device="cuda"', 'device="cpu"')


def write_fixtures(folder: Path, page: Path) -> None:
    if page.name == "data.md":
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        (folder / "my_photos").mkdir(exist_ok=True)
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / "my_photos" / f"{i}.png")
        (folder / "unet.json").write_text(json.dumps(dict(in_channels=3, out_channels=3, sample_size=8, base_channels=16,
                                                          channel_mult=[1, 2], layers_per_block=1, attn_resolutions=[4],
                                                          norm_groups=8)))


SHARES_FOLDER = {"quality.md": "generation.md"}  # quality.md evaluates the samples generation.md's block wrote


def run_in_process(argv, folder: Path, where: str) -> None:
    """A fastddpm command run as `python -m fastddpm.X` would run it (cli.run: its errors as one
    line and an exit status), in this process: the interpreter's start-up is most of a small command's
    time. torchrun's launches stay separate processes."""
    from fastddpm import cli

    command, args = fastddpm_command(argv)
    mod = importlib.import_module(f"fastddpm.{command}")
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.run(f"python -m fastddpm.{command}", mod.main, args)
    except SystemExit as e:
        assert e.code in (0, None), f"{where}: {' '.join(argv)}\n{err.getvalue()[-3000:]}"
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_every_block_runs(tmp_path):
    """Every block not marked check runs on this CPU, as written but for the substitutions above,
    page after page (README's train, generate and eval chain; docs' too)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ran = 0
    for page in PAGES:
        folder = tmp_path / SHARES_FOLDER.get(page.name, page.name)
        folder.mkdir(exist_ok=True)
        write_fixtures(folder, page)
        for i, (kind, code, mark, reason) in enumerate(blocks(page)):
            if mark == "check":
                continue
            where = f"{page.name} block {i}"
            if kind == "python":  # in a fresh namespace, in the page's folder
                old = os.getcwd()
                os.chdir(folder)
                try:
                    exec(compile(PRELUDE + "\n" + shrink_python(code), f"<{where}>", "exec"), {"__name__": "__docs__"})
                except Exception as e:
                    raise AssertionError(f"{where}:\n{code}\n{type(e).__name__}: {e}") from e
                finally:
                    os.chdir(old)
                ran += 1
                continue
            for argv in commands(code):
                assert fastddpm_command(argv), f"{where}: {' '.join(argv)} is not a fastddpm command: mark the block check"
                full = substitute(argv)
                if full[0] == sys.executable and full[1:3] == ["-m", "torch.distributed.run"]:
                    run = subprocess.run(full, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
                    assert run.returncode == 0, f"{where}: {' '.join(full)}\n{run.stderr[-3000:]}"
                else:
                    run_in_process(full, folder, where)
                ran += 1
    assert ran >= 15


def test_python_m_fastddpm_lists_every_command():
    run = subprocess.run([sys.executable, "-m", "fastddpm"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    for c in COMMANDS:
        assert re.search(rf"^  {c}\s+python -m fastddpm\.{c}: \S", run.stdout, re.M), c
    bad = subprocess.run([sys.executable, "-m", "fastddpm", "trian"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("python -m fastddpm: error: unknown command 'trian'")
    via = subprocess.run([sys.executable, "-m", "fastddpm", "eval", "x.npz"], capture_output=True, text=True, timeout=120)
    assert via.returncode == 2 and via.stderr.strip().endswith("(your images or statistics)")  # the eval command's own error


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"the README does not link docs/{page.name}"
    for page in PAGES:
        text = page.read_text()
        base = page.parent
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http"):
                assert (base / link).exists(), f"{page.name}: a link to {link}, which does not exist"
