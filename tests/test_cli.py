"""The command lines as a user meets them, through real `python -m` processes: a mistake is
one line `prog: error: ...` and an exit status (2 for usage, 1 at run time), never a stack;
long work speaks first and last (Ctrl-C and SIGTERM: test_stop.py). And generate's
work is the images asked for."""

import os
import subprocess
import sys

import pytest
import torch

from fastddpm import TrainConfig, Trainer, UNet, UNetConfig
from procs import default_signals
from fastddpm.io.data import digits

TINY = UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2),
                  layers_per_block=1, attn_resolutions=(4,), norm_groups=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    torch.manual_seed(0)
    Trainer(UNet(TINY), digits(), TrainConfig(steps=2, batch_size=8, warmup=1, checkpoint_every=2, sample_every=0),
            out_dir=out, device="cpu", progress=False).fit()
    return out


def cli(module, *args, env=None, timeout=300):
    """The command to its end; on a timeout subprocess.run kills it (these start no children)."""
    return subprocess.run([sys.executable, "-m", f"fastddpm.{module}", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, preexec_fn=default_signals)


def assert_error_line(proc, module, match, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    head = f"python -m fastddpm.{module}: error: "
    at = proc.stderr.rfind(head)
    assert at >= 0 and (at == 0 or proc.stderr[at - 1] == "\n"), proc.stderr
    assert match in proc.stderr[at:], (match, proc.stderr)


def test_generate_mistakes_are_one_line(run, tmp_path):
    out = tmp_path / "g"
    assert_error_line(cli("generate", "--model", "nosuch", "--out", out, "--n", 4), "generate",
                      "model: nosuch is neither a file, a folder, nor a shipped model")
    assert_error_line(cli("generate", "--model", run, "--out", out, "--n", 0), "generate", "n: expected a positive int")
    assert_error_line(cli("generate", "--model", run, "--out", out, "--seeds", "5-2"), "generate", "seeds: the range 5-2 is empty")
    assert_error_line(cli("generate", "--model", run, "--out", out, "--n", 4, "--device", "cuda:0"), "generate",
                      "device: 'cuda:0' asked for, but torch sees no CUDA device")
    assert not out.exists()  # every refusal above came before the folder was made
    assert_error_line(cli("generate", "--model", run, "--out", out, "--n", 4, "--bogus"), "generate",
                      "unrecognized arguments: --bogus", code=2)
    ok = cli("generate", "--model", run, "--out", out, "--n", 4, "--shard", 2, "--method", "ddim", "--steps", 2)
    assert ok.returncode == 0, ok.stderr
    again = cli("generate", "--model", run, "--out", out, "--n", 4, "--shard", 2, "--method", "ddim", "--steps", 3)
    assert_error_line(again, "generate", "")  # the differences follow on their own lines, in full
    assert "every difference:\n  method.steps: 2 in the folder, 3 now\n" in again.stderr
    debug = cli("generate", "--model", "nosuch", "--out", out, "--n", 4, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # a stack on request
    assert "Traceback" in cli("generate", "--model", "nosuch", "--out", out, "--n", 4, env={"FASTDDPM_DEBUG": "1"}).stderr


def test_generate_takes_the_multistep_solvers_and_refuses_their_mistakes(run, tmp_path):
    import json

    out = tmp_path / "u"
    ok = cli("generate", "--model", run, "--out", out, "--n", 2, "--method", "unipc", "--order", 3, "--solver-type", "bh1",
             "--steps", 4, "--disable-corrector", "0", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    method = json.loads((out / "manifest.json").read_text())["config"]["method"]
    assert (method["name"], method["order"], method["solver_type"], method["corrector"], method["disable_corrector"]) == \
        ("unipc", 3, "bh1", True, [0])
    again = cli("generate", "--model", run, "--out", out, "--n", 2, "--method", "unipc", "--order", 2, "--steps", 4)
    assert_error_line(again, "generate", "")  # another order is another configuration: refused, not mixed
    assert "method.order: 3 in the folder, 2 now" in again.stderr
    # one refusal of each kind as a user meets it (every option's own refusals: test_solvers.py)
    bad = tmp_path / "bad"
    assert_error_line(cli("generate", "--model", run, "--out", bad, "--n", 2, "--method", "unipc", "--order", 5), "generate",
                      "order: unipc has orders 1 to 3, got 5")
    assert_error_line(cli("generate", "--model", run, "--out", bad, "--n", 2, "--method", "unipc", "--disable-corrector", "a"),
                      "generate", "--disable-corrector: expected step indices", code=2)
    assert not bad.exists()


def test_generate_speaks_first_and_last_and_a_rerun_says_what_it_verified(run, tmp_path):
    out = tmp_path / "g"
    first = cli("generate", "--model", run, "--out", out, "--n", 6, "--shard", 2, "--method", "ddim", "--steps", 2, "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "6 images in" in first.stderr and "3 shards written" in first.stderr  # the summary, even with --no-progress
    rerun = cli("generate", "--model", run, "--out", out, "--n", 6, "--shard", 2, "--method", "ddim", "--steps", 2)
    lines = rerun.stderr.splitlines()
    assert lines[0].startswith(f"generate: {run}/checkpoints/step-000000002.safetensors (checkpoint), ddim") and "6 images (1, 8, 8) in 3 shards of 2" in lines[0]
    assert "3 shards verified, 0 to do (0 images)" in rerun.stderr
    assert not list(out.glob(".*"))  # no lock or temporary file left behind


def test_generate_accepts_negative_seed_ranges(run, tmp_path):
    proc = cli("generate", "--model", run, "--out", tmp_path / "neg", "--seeds", "-5-4", "--method", "ddim", "--steps", 2,
               "--shard", 10)
    assert proc.returncode == 0, proc.stderr
    assert "10 images" in proc.stderr


def test_other_clis_mistakes_are_one_line(run, tmp_path):
    assert_error_line(cli("eval", tmp_path / "missing", "--data", "digits"), "eval", "SAMPLES: ")
    assert_error_line(cli("eval", tmp_path, "--data", "nosuch"), "eval", "invalid choice: 'nosuch'", code=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error_line(cli("train", "--out", empty, "--resume", "--device", "cpu"), "train", "resume: ")
    assert list(empty.iterdir()) == []  # nothing created in it
    assert_error_line(cli("train", "--out", tmp_path / "typo", "--resume"), "train", "resume: ")
    assert not (tmp_path / "typo").exists()
    assert_error_line(cli("pretrained", "export-diffusers", "nosuch", tmp_path / "x"), "pretrained", "model: nosuch")
    assert_error_line(cli("bench", "--only", "nosuch"), "bench", "--only: expected a comma list", code=2)
    assert_error_line(cli("bench", "--guidance"), "bench", "--guidance: only with --quality", code=2)
    assert_error_line(cli("bench", "--quality", "--guidance", "--data", "digits"), "bench",
                      "data: --quality --guidance needs a shipped class-conditional model: --data fashion-mnist")


def test_a_second_trainer_on_a_locked_folder_is_one_line(run, tmp_path):
    import fcntl

    folder = tmp_path / "locked"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 1 on elsewhere")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = cli("train", "--out", folder, "--steps", 2, "--device", "cpu")
        assert_error_line(proc, "train", "is in use by another trainer (pid 1 on elsewhere)")
    finally:
        os.close(fd)


def test_generate_work_is_the_images_asked_for(run, tmp_path, monkeypatch):
    from fastddpm.generate import generate
    from fastddpm.sampling.sampler import Sampler

    sampled = []
    real = Sampler.run
    monkeypatch.setattr(Sampler, "run", lambda self, *a, **kw: sampled.append(len(kw["seeds"])) or real(self, *a, **kw))
    for n, shard, batch, want in ((100, 50, 1024, 100), (600, 50, 1024, 600), (130, 50, 1024, 130), (100, 100, 30, 100),
                                  (10, 4, 3, 10)):
        sampled.clear()
        m = generate(str(run), n=n, out=tmp_path / f"w{n}-{shard}-{batch}", shard=shard, batch=batch, method="ddim", steps=1,
                     device="cpu", progress=False)
        assert m["complete"] and max(sampled) <= min(shard, batch), (n, shard, batch, sampled)
        assert sum(sampled) <= want + len(sampled) - 1, (n, shard, batch, sampled)  # at most one pad a part


def test_the_wrapper_turns_a_full_disk_and_a_bug_into_what_they_are(capsys, monkeypatch):
    import errno

    from fastddpm import cli as wrapper

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/shard-000003.npz")

    with pytest.raises(SystemExit) as e:
        wrapper.run("python -m fastddpm.generate", full, [])
    assert e.value.code == 1
    assert capsys.readouterr().err == ("python -m fastddpm.generate: error: No space left on device: /data/out/shard-000003.npz "
                                       "(the disk is full: free space and run the same command to resume)\n")

    def bug(argv):
        raise ZeroDivisionError("a genuine bug")

    with pytest.raises(ZeroDivisionError):  # not a user's mistake: the stack shows
        wrapper.run("python -m fastddpm.generate", bug, [])
    monkeypatch.setenv("FASTDDPM_DEBUG", "1")
    with pytest.raises(OSError):  # asked for: the stack of a user error too
        wrapper.run("python -m fastddpm.generate", full, [])
