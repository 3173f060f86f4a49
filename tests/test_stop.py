"""Stopping runs: Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and torchrun send) keep the
work done, say what was kept, exit 130 / 143, and the same command resumes exactly: `train`
in one process and as two DDP ranks, `generate` at two phases. Every child goes through the
`procs` fixture (tests/procs.py): signals at their defaults whatever this run inherited,
bounded waits on events, killed and reaped when the test ends."""

import os
import signal

import pytest
import torch

from fastddpm import TrainConfig, Trainer, UNet, UNetConfig
from fastddpm.io import checkpoint as ckpt
from fastddpm.io import stop
from fastddpm.io.data import digits

TINY = UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2),
                  layers_per_block=1, attn_resolutions=(4,), norm_groups=8)
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
ENV = {"OMP_NUM_THREADS": "1"}


def stopped_line(err: str, prog: str, sig) -> str:
    """The command's last line after a stop: `prog: interrupted[ (SIGTERM)]: ...`."""
    last = err.strip().splitlines()[-1]
    how = "" if sig == signal.SIGINT else " (SIGTERM)"
    assert last.startswith(f"python -m fastddpm.{prog}: interrupted{how}: "), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return last


# ---------------------------------------------------------------------------------- generate

GEN = ["--n", "24", "--shard", "3", "--batch", "3", "--method", "ddpm", "--steps", "60", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stop") / "run"
    torch.manual_seed(0)
    Trainer(UNet(TINY), digits(), TrainConfig(steps=2, batch_size=8, warmup=1, checkpoint_every=2, sample_every=0),
            out_dir=out, device="cpu", progress=False).fit()
    return out


@pytest.fixture(scope="module")
def straight(run, tmp_path_factory):
    from fastddpm.generate import main
    from test_generate import files

    out = tmp_path_factory.mktemp("stop") / "straight"
    main(["--model", str(run), "--out", str(out), *GEN, "--no-progress"])
    return files(out)


@pytest.mark.slow
@SIGNALS
@pytest.mark.parametrize("phase", ["first-shard", "after-two-shards"])
def test_generate_stops_keeps_its_shards_and_resumes_exactly(run, straight, tmp_path, procs, sig, phase):
    from test_generate import files

    out = tmp_path / "g"
    args = ["-m", "fastddpm.generate", "--model", run, "--out", out, *GEN]
    child = procs.python(*args, env=ENV)
    if phase == "first-shard":
        child.wait_for("0 shards verified, 8 to do")  # the next thing it does is sample shard 0
    else:
        child.wait_until(lambda: (out / "shard-000001.json").exists(), "two shards written")
    child.send(sig)
    rc, err = child.finish()
    assert rc == 128 + sig, err[-3000:]
    last = stopped_line(err, "generate", sig)
    kept = int(last.split("interrupted")[1].split(": ")[1].split(" of ")[0])
    assert last.endswith(f"{kept} of 8 shards written into {out}; run the same command to resume")
    assert kept == len(list(out.glob("shard-*.json"))) and kept < 8
    if phase == "after-two-shards":  # a sidecar is written last: two shards were complete when the signal left
        assert kept >= 2
    assert not list(out.glob(".*")), list(out.glob(".*"))  # no temporary file, no lock left
    resumed = procs.run(*args, "--no-progress", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{8 - kept} shards written, {kept} verified before" in resumed.stderr
    assert files(out) == straight


# ---------------------------------------------------------------------------------- train

TRAIN = ["--steps", "200", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "0", "--sample-every", "0",
         "--device", "cpu"]


def model_tensors(folder):
    tensors, meta = ckpt.read(ckpt.latest(folder / "checkpoints"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}, meta


def assert_same_run(a, b):
    ta, ma = model_tensors(a)
    tb, mb = model_tensors(b)
    assert ma["step"] == mb["step"] and ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def straight_run(tmp_path_factory, name, *args):
    """A run to its end, in a child with the same environment as the stopped ones (one thread:
    another thread count sums in another order, and the comparison is bitwise)."""
    from procs import Procs

    out, p = tmp_path_factory.mktemp("stop") / name, Procs()
    try:
        done = p.run(*args, "--out", out, env=ENV)
    finally:
        p.close()
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straight_train(tmp_path_factory):
    return straight_run(tmp_path_factory, "train-straight", "-m", "fastddpm.train", *TRAIN)


@pytest.mark.slow
@SIGNALS
def test_training_stops_after_the_step_in_flight_with_a_checkpoint_and_resumes_exactly(straight_train, tmp_path, procs, sig):
    out = tmp_path / "t"
    args = ["-m", "fastddpm.train", *TRAIN, "--out", out]
    child = procs.python(*args, env=ENV)
    child.wait_for("step 3/")
    child.send(sig)
    rc, err = child.finish()
    assert rc == 128 + sig, err[-3000:]
    assert err.splitlines()[0].startswith("train: digits (1797 images 1x8x8), U-Net 'digits'")
    assert f"{signal.Signals(sig).name}: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)" in err
    last = stopped_line(err, "train", sig)
    step = int(last.split("stopped after step ")[1].split()[0])
    assert 3 <= step < 200 and last.endswith("run the same command with --resume to continue")
    path = out / "checkpoints" / f"step-{step:09d}.safetensors"
    assert f"checkpoint {path}" in last and ckpt.read(path)[1]["step"] == step  # it verifies
    resumed = procs.run(*args, "--resume", env=ENV)
    assert resumed.returncode == 0 and f"resuming from step {step} (checkpoint " in resumed.stderr, resumed.stderr[-3000:]
    assert_same_run(out, straight_train)


def torchrun(port: int, *extra):
    return ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "fastddpm.train",
            *TRAIN, *extra]


@pytest.fixture(scope="module")
def straight_ddp(tmp_path_factory):
    return straight_run(tmp_path_factory, "ddp-straight", *torchrun(29541))


@pytest.mark.slow
@pytest.mark.parametrize("sig, port", [(signal.SIGINT, 29542), (signal.SIGTERM, 29543)], ids=["ctrl-c", "sigterm"])
def test_ddp_ranks_stop_at_the_same_step_and_resume_exactly(straight_ddp, tmp_path, procs, sig, port):
    # The signal goes to torchrun, as a terminal's Ctrl-C or a scheduler's SIGTERM does; it
    # forwards it to the workers (each in a session of its own). Both ranks must stop after the
    # same step, rank 0 with a checkpoint of it, and the resumed run must equal a straight one.
    out = tmp_path / "ddp"
    agent = procs.python(*torchrun(port, "--out", out), env=ENV)
    agent.wait_for("step 3/")
    agent.send(sig)
    rc, err = agent.finish()
    assert rc != 0, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("python -m fastddpm.train: interrupted")]
    assert len(lines) == 2, err[-3000:]  # one a rank
    steps = {int(ln.split("stopped after step ")[1].split()[0]) for ln in lines}
    assert len(steps) == 1, lines
    step = steps.pop()
    assert any("written by rank 0" in ln for ln in lines) and any(f"step-{step:09d}.safetensors" in ln for ln in lines)
    assert model_tensors(out)[1]["step"] == step
    resumed = procs.run(*torchrun(port, "--out", out, "--resume"), env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, straight_ddp)


# ---------------------------------------------------------------------------------- the rules


def test_an_ignored_sigint_stays_ignored_and_sigterm_still_stops(tmp_path, procs):
    # A run started in the background by a script inherits SIGINT ignored (the terminal's
    # Ctrl-C is for the foreground job): the trainer keeps it so; SIGTERM stops it, kept.
    out = tmp_path / "t"
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "from fastddpm import cli; from fastddpm.train import main; "
            f"cli.run('python -m fastddpm.train', main, {[*TRAIN, '--out', str(out)]!r})")
    child = procs.python("-c", code, env=ENV)
    child.wait_for("step 3/")
    child.send(signal.SIGINT)
    child.wait_for("step 12/")  # still training
    child.send(signal.SIGTERM)
    rc, err = child.finish()
    assert rc == 143 and "SIGINT" not in err, err[-3000:]
    last = stopped_line(err, "train", signal.SIGTERM)
    assert int(last.split("stopped after step ")[1].split()[0]) >= 12


def test_shielded_delivers_the_signal_after_the_block_and_deferred_notes_it():
    seen = []
    with stop.term_raises():
        with pytest.raises(stop.Interrupted) as e:
            with stop.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                seen.append("the block ran to its end")
        assert e.value.signum == signal.SIGTERM and e.value.exit_status == 143 and seen
        with stop.deferred() as d:
            os.kill(os.getpid(), signal.SIGTERM)
            assert d.signum == signal.SIGTERM  # noted, nothing raised
            with pytest.raises(stop.Interrupted):  # a second one acts at once
                os.kill(os.getpid(), signal.SIGTERM)
        with stop.raising() as r:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except stop.Interrupted:
                pass  # as Python does where it cannot propagate: a weakref callback, a __del__
            with pytest.raises(stop.Interrupted):
                r.check()  # not lost
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's, restored after the command


def test_a_plain_keyboard_interrupt_is_ctrl_c():
    assert stop.signal_of(KeyboardInterrupt()) == signal.SIGINT
    assert stop.signal_of(stop.Interrupted(signal.SIGTERM, "x")) == signal.SIGTERM
    assert isinstance(stop.Interrupted(), KeyboardInterrupt)  # every `except KeyboardInterrupt` sees it
