"""Generation at scale: shards, resume after SIGKILL, many processes, damaged shards, bad input."""

import json
import time

import numpy as np
import pytest
import torch

from fastddpm import TrainConfig, Trainer, UNet, UNetConfig
from fastddpm.io.data import digits
from fastddpm.eval import main as eval_main
from fastddpm.generate import main as generate_main
from fastddpm.sampling.generate import parse_seeds

TINY = UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2),
                  layers_per_block=1, attn_resolutions=(4,), norm_groups=8)
FAST = ["--method", "ddim", "--steps", "4", "--batch", "8", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    Trainer(UNet(TINY), digits(), TrainConfig(steps=2, batch_size=8, sample_every=0), out_dir=folder, device="cpu",
            progress=False).fit()
    return folder


def untimed(meta: dict) -> dict:
    """A shard's sidecar without the wall time its sampling took (the one field a machine's speed sets)."""
    assert meta["seconds"] >= 0
    return {k: v for k, v in meta.items() if k != "seconds"}


def files(folder):
    """Every shard's bytes (sidecars without their wall time), and the manifest without its finishing
    time and the shards' wall times."""
    out = {p.name: json.dumps(untimed(json.loads(p.read_text()))) if p.suffix == ".json" else p.read_bytes()
           for p in sorted(folder.glob("shard-*"))}
    m = json.loads((folder / "manifest.json").read_text())
    m.pop("finished", None)
    m["shards"] = [untimed(s) for s in m["shards"]]
    return out, m


def gen(run, out, *extra):
    return generate_main(["--model", str(run), "--out", str(out), *FAST, *extra])


def test_shard_size_and_batch_position_do_not_change_an_image(run, tmp_path):
    one = gen(run, tmp_path / "one", "--n", "100", "--shard", "100")
    many = gen(run, tmp_path / "many", "--n", "100", "--shard", "30")
    a = np.load(tmp_path / "one" / "shard-000000.npz")["images"]
    b = np.concatenate([np.load(tmp_path / "many" / f"shard-{i:06d}.npz")["images"] for i in range(4)])
    assert a.shape == (100, 8, 8, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # bitwise: every micro-batch had the same size
    assert one["complete"] and [s["count"] for s in many["shards"]] == [30, 30, 30, 10]
    c = gen(run, tmp_path / "tail", "--seeds", "40-99", "--shard", "25")
    tail = np.concatenate([np.load(tmp_path / "tail" / f"shard-{i:06d}.npz")["images"] for i in range(3)])
    assert np.array_equal(tail, a[40:]) and c["config"]["seeds"] == [[40, 99]]


def test_png_format(run, tmp_path):
    gen(run, tmp_path / "png", "--n", "12", "--shard", "5", "--format", "png")
    from fastddpm.io.images import read_png

    shard1 = sorted((tmp_path / "png" / "shard-000001").glob("*.png"))
    assert len(shard1) == 5 and shard1[0].name == f"{5:020d}.png"
    gen(run, tmp_path / "npz", "--n", "12", "--shard", "12")
    ref = np.load(tmp_path / "npz" / "shard-000000.npz")["images"]
    assert np.array_equal(read_png(shard1[0]).permute(1, 2, 0).numpy(), ref[5])


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_files(run, tmp_path, procs):
    args = ["--n", "40", "--shard", "5", "--method", "ddpm", "--steps", "40", "--batch", "5", "--no-progress", "--device", "cpu"]
    straight = tmp_path / "straight"
    generate_main(["--model", str(run), "--out", str(straight), *args])
    want = files(straight)
    killed = tmp_path / "killed"
    for after in (1, 3, 6):  # SIGKILL once `after` shards are on disk (or the run ends), then again later
        child = procs.python("-m", "fastddpm.generate", "--model", run, "--out", killed, *args, env={"OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        while child.proc.poll() is None and len(list(killed.glob("shard-*.json"))) < after and time.monotonic() < deadline:
            time.sleep(0.02)
        child.kill()
    generate_main(["--model", str(run), "--out", str(killed), *args])
    assert files(killed) == want
    assert not list(killed.glob(".*.tmp-*"))  # a killed write leaves a temporary file, which a rerun replaces


@pytest.mark.slow
def test_two_processes_write_the_same_files_as_one(run, tmp_path, procs):
    args = ["--model", str(run), "--n", "30", "--shard", "4", *FAST]
    generate_main([*args, "--out", str(tmp_path / "one")])
    env = {"OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    two = [procs.python("-m", "fastddpm.generate", *args, "--out", tmp_path / "two", env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
           for r in (0, 1)]
    for child in two:
        rc, err = child.finish()
        assert rc == 0, err[-2000:]
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_a_damaged_shard_is_found_and_made_again(run, tmp_path):
    out = tmp_path / "g"
    gen(run, out, "--n", "20", "--shard", "5")
    want = files(out)
    p = out / "shard-000002.npz"
    p.write_bytes(p.read_bytes()[:100])  # truncated
    (out / "shard-000003.npz").unlink()  # missing
    raw = bytearray((out / "shard-000000.npz").read_bytes())
    raw[len(raw) // 2] ^= 1  # one flipped bit
    (out / "shard-000000.npz").write_bytes(bytes(raw))
    gen(run, out, "--n", "20", "--shard", "5")
    assert files(out) == want


def test_another_configuration_into_the_same_folder_is_refused(run, tmp_path):
    out = tmp_path / "g"
    gen(run, out, "--n", "10", "--shard", "5")
    with pytest.raises(ValueError, match=r"out: .* holds a generation with another configuration; every difference:\n"
                                         r"  method.steps: 4 in the folder, 5 now\nuse another --out"):
        generate_main(["--model", str(run), "--out", str(out), "--n", "10", "--shard", "5", "--method", "ddim", "--steps", "5",
                       "--batch", "8", "--no-progress", "--device", "cpu"])
    with pytest.raises(ValueError) as e:  # every difference, in full, one a line
        gen(run, out, "--n", "12", "--shard", "5")
    assert "\n  n: 10 in the folder, 12 now\n" in str(e.value) and "\n  seeds: [[0, 9]] in the folder, [[0, 11]] now\n" in str(e.value)


def test_bad_input_is_refused_before_any_sampling(run, tmp_path, monkeypatch):
    monkeypatch.setattr("fastddpm.sampling.generate.load_model", lambda *a: (_ for _ in ()).throw(AssertionError("sampled after a bad input")))
    afile = tmp_path / "f"
    afile.write_text("x")
    for extra, match in (
        (["--n", "0"], "n: expected a positive int"),
        (["--n", "-3"], "n: expected a positive int"),
        (["--seeds", "5-3"], r"seeds: the range 5-3 is empty"),
        (["--seeds", "0-9,5-12"], "seeds: .* names some seeds twice"),
        (["--seeds", "a-b"], "seeds: expected ranges"),
        (["--n", "5", "--seeds", "0-9"], "n: 5 disagrees with the 10 seeds"),
        (["--n", "5", "--shard", "0"], "shard: expected a positive int"),
        (["--n", "5", "--batch", "0"], "batch: expected a positive int"),
    ):
        with pytest.raises(ValueError, match=match):
            generate_main(["--model", str(run), "--out", str(tmp_path / "o"), *extra])
    with pytest.raises(ValueError, match="out: .* is a file, not a folder"):
        generate_main(["--model", str(run), "--out", str(afile), "--n", "5"])
    with pytest.raises(ValueError, match="out: .* cannot hold checkpoints"):
        generate_main(["--model", str(run), "--out", str(afile / "sub"), "--n", "5"])
    monkeypatch.undo()
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(ValueError, match="model: .*nothing has no usable weights"):
        generate_main(["--model", str(empty), "--out", str(tmp_path / "o2"), "--n", "5"])
    with pytest.raises(ValueError, match="model: .* is neither a file, a folder, nor a shipped model"):
        generate_main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o3"), "--n", "5"])


def test_parse_seeds():
    assert parse_seeds("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert parse_seeds("-5--3") == [-5, -4, -3]


def test_python_function_and_eval_hook(run, tmp_path):
    from fastddpm.generate import generate

    m = generate(str(run), n=300, out=tmp_path / "e", method="ddim", steps=3, batch=100, shard=100, device="cpu",
                 eval="digits", progress=False)
    assert m["complete"] and m["eval"]["samples"] == 300 and "fd" in m["eval"]
    assert (tmp_path / "e" / "eval-digits-test.json").exists()


def test_what_a_killed_run_left_is_removed_at_the_next_start(run, tmp_path):
    out = tmp_path / "g"
    gen(run, out, "--n", "4", "--shard", "2")
    (out / "shard-000001.npz").unlink()  # a shard lost, and the leftovers of a writer killed while writing it
    for name in (".shard-000001.npz.tmp-4242", ".shard-000001.json.tmp-4242", ".shard-000001.lock", ".shard-000000.lock"):
        (out / name).write_bytes(b"half")
    (out / ".shard-000003.tmp-4242").mkdir()  # a PNG shard's temporary folder
    (out / ".shard-000003.tmp-4242" / "x.png").write_bytes(b"half")
    m = gen(run, out, "--n", "4", "--shard", "2")
    assert m["complete"] and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_full_disk_leaves_nothing_behind_and_the_rerun_finishes(run, tmp_path, monkeypatch):
    import errno

    import fastddpm.io.samples as samples

    out = tmp_path / "g"
    real = samples.os.replace
    calls = []

    def full(src, dst):  # the second shard's data cannot be written: ENOSPC
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(samples.os, "replace", full)
    with pytest.raises(OSError) as e:
        gen(run, out, "--n", "4", "--shard", "2")
    assert e.value.errno == errno.ENOSPC
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary, no lock
    monkeypatch.undo()
    assert gen(run, out, "--n", "4", "--shard", "2")["complete"]


def test_eval_checks_its_json_path_before_reading_any_image(tmp_path, monkeypatch):
    from fastddpm import metrics

    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("evaluated first")))
    with pytest.raises(ValueError, match="--json: .*file is a file, not a folder"):
        eval_main([str(tmp_path / "s.npz"), "--data", "digits", "--json", str(tmp_path / "file" / "r.json")])
    with pytest.raises(ValueError, match="k: expected a positive int"):
        eval_main([str(tmp_path / "s.npz"), "--data", "digits", "--k", "0"])
    with pytest.raises(ValueError, match="kid_subsets: expected a positive int"):
        eval_main([str(tmp_path / "s.npz"), "--data", "digits", "--kid-subsets", "0"])


def test_damaged_samples_are_named(run, tmp_path):
    from fastddpm.io.samples import iter_samples

    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="SAMPLES: .*bad.npz is not a readable .npz"):
        list(iter_samples(tmp_path / "bad.npz"))
    out = tmp_path / "g"
    gen(run, out, "--n", "4", "--shard", "2")
    (out / "shard-000001.npz").write_bytes(b"PK\x03\x04 garbled")
    with pytest.raises(ValueError, match="SAMPLES: shard .*shard-000001.npz is unreadable"):
        list(iter_samples(out))


def test_two_processes_may_create_the_folder_at_the_same_moment(tmp_path, monkeypatch):
    # the race torchrun ranks run: both see the folder missing, the other one makes it first
    from fastddpm.io import checkpoint as ckpt

    target = tmp_path / "a" / "b"
    real_exists = type(target).exists
    seen = []

    def exists_then_made_by_another(self):
        if self == target and not seen:
            seen.append(True)
            target.mkdir(parents=True)  # the other rank, between our look and our mkdir
            return False
        return real_exists(self)

    monkeypatch.setattr(type(target), "exists", exists_then_made_by_another)
    assert ckpt.make_dir(target) == target and target.is_dir()


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    from fastddpm.io.data import load_labelled

    folder = tmp_path_factory.mktemp("cond")
    torch.manual_seed(0)
    Trainer(UNet(UNetConfig(**{**TINY.__dict__, "num_classes": 10})), load_labelled("digits"),
            TrainConfig(steps=2, batch_size=8, sample_every=0), out_dir=folder, device="cpu", progress=False).fit()
    return folder


def test_a_conditional_model_generates_with_labels_and_guidance(cond_run, tmp_path):
    args = ["--n", "12", "--guidance", "2", "--guidance-interval", "100,800", "--method", "ddim", "--steps", "4", "--batch", "4"]
    one = generate_main(["--model", str(cond_run), "--out", str(tmp_path / "one"), "--shard", "12", "--no-progress", *args])
    generate_main(["--model", str(cond_run), "--out", str(tmp_path / "many"), "--shard", "5", "--no-progress", *args])
    assert one["config"]["labels"] == "seed mod num_classes" and one["config"]["method"]["guidance"] == 2.0
    with np.load(tmp_path / "one" / "shard-000000.npz") as f:
        assert f["labels"].tolist() == [s % 10 for s in range(12)]
        a = f["images"]
    b = np.concatenate([np.load(tmp_path / "many" / f"shard-00000{i}.npz")["images"] for i in range(3)])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the same images, whatever the shard (fp32 micro-batches)
    assert one["shards"][0]["labels"] == [s % 10 for s in range(12)]
    fixed = generate_main(["--model", str(cond_run), "--out", str(tmp_path / "three"), "--labels", "3", "--no-progress", *args])
    assert fixed["shards"][0]["labels"] == [3] * 12


def test_conditional_generation_bad_input(cond_run, run, tmp_path):
    base = ["--n", "4", "--method", "ddim", "--steps", "2", "--out", str(tmp_path / "never")]
    for model, extra, match in ((run, ["--labels", "1"], "labels: this model is unconditional"),
                                (run, ["--guidance", "2"], "guidance: classifier-free guidance needs a class-conditional"),
                                (cond_run, ["--labels", "10"], r"labels: expected classes in \[0, 10\)"),
                                (cond_run, ["--labels", "1,2"], "labels: 2 labels for 4 images"),
                                (cond_run, ["--labels", "a"], "labels: expected an int or a comma list"),
                                (cond_run, ["--guidance", "-1"], "guidance: expected a finite weight"),
                                (cond_run, ["--guidance", "2", "--guidance-interval", "800,100"], "guidance_interval:")):
        with pytest.raises((ValueError, TypeError), match=match):
            generate_main(["--model", str(model), *base, *extra])
    assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit):
        generate_main(["--model", str(cond_run), *base, "--guidance", "2", "--guidance-interval", "x"])


def test_eval_of_a_conditional_generation_reports_class_accuracy(cond_run, tmp_path, capsys):
    out = tmp_path / "g"
    generate_main(["--model", str(cond_run), "--out", str(out), "--n", "70", "--method", "ddim", "--steps", "2", "--no-progress"])
    report = eval_main([str(out), "--data", "digits"])
    assert 0 <= report["class_accuracy"] <= 1 and report["fd_per_class_mean"] is None  # 7 a class: too few for per-class FD
    assert "class accuracy" in capsys.readouterr().out
