"""The benchmark: byte and FLOP counts against hand counts, and an end-to-end CPU run
that writes valid JSON."""

import json
import os

import pytest
import torch

from fastddpm.bench import cli as bench
from fastddpm.bench.timing import kernel_bytes, unet_flops


def test_kernel_bytes_hand_counts():
    n = 1024 * 3 * 32 * 32
    assert kernel_bytes("q_sample", (1024, 3, 32, 32), torch.float32) == 2 * n * 4  # read x_0, write x_t
    assert kernel_bytes("q_sample", (1024, 3, 32, 32), torch.bfloat16) == 2 * n * 2
    # reverse step, bf16 model: read x (4) + ε̂ (2), write x (4) + the bf16 copy (2)
    assert kernel_bytes("reverse_step", (1024, 3, 32, 32), torch.bfloat16) == n * 12
    assert kernel_bytes("reverse_step", (1024, 3, 32, 32), torch.float32) == n * 16
    # loss: forward reads ε̂, backward reads ε̂ and writes the gradient
    assert kernel_bytes("loss", (2, 3, 4, 5), torch.float16) == 3 * 120 * 2
    with pytest.raises(ValueError, match="op: expected"):
        kernel_bytes("add_noise", (1, 1, 1, 1), torch.float32)


def test_flop_count_hand_count():
    # a 3x3 conv, 3 -> 8 channels on 16x16 (2 FLOP per multiply-add), then a 1x1 conv 8 -> 3
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 1))
    model = lambda x, t: net(x)  # noqa: E731
    assert unet_flops(model, (3, 16, 16), "cpu") == 2 * 3 * 8 * 9 * 256 + 2 * 8 * 3 * 256


def test_percentiles_hold_the_median_for_few_repetitions():
    from fastddpm.bench.timing import summarize

    for times in ([3.0, 1.0], [5.0, 1.0, 2.0], [4.0, 1.0, 9.0, 2.0]):
        r = summarize(times)
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r
    assert summarize([2.0]) == {"median_ms": 2.0, "p20_ms": None, "p80_ms": None, "reps": 1}


def test_overloaded_host_is_reported(monkeypatch):
    from fastddpm.bench import timing as benchlib

    monkeypatch.setattr(__import__("os"), "cpu_count", lambda: 2)
    slept = lambda: 0.0  # noqa: E731  (the bench's own CPU time over the window: it sleeps)
    busy = iter([(0, 0), (150, 200)])  # another process kept 1.5 of 2 CPUs busy over the window
    r = benchlib.host_load(window_s=0.01, stat=lambda: next(busy), own=slept)
    assert r["overloaded"] is True and r["others_cpus"] == 1.5
    quiet = iter([(0, 0), (1, 200)])
    assert benchlib.host_load(window_s=0.01, stat=lambda: next(quiet), own=slept)["overloaded"] is False
    mine = iter([(0, 0), (150, 200)])  # the same busy CPUs, all of them this process's own: not a busy host
    own = iter([0.0, 0.015])
    assert benchlib.host_load(window_s=0.01, stat=lambda: next(mine), own=lambda: next(own))["overloaded"] is False
    # the load average (which counts the pip install that ran just before) no longer decides
    monkeypatch.setattr(__import__("os"), "getloadavg", lambda: (9.0, 0, 0))
    quiet = iter([(0, 0), (1, 200)])
    assert benchlib.host_load(window_s=0.01, stat=lambda: next(quiet), own=slept)["overloaded"] is False


def test_damaged_compile_cache_is_explained():
    from fastddpm.sampling.sampler import compile_errors_explained, compile_cache_damaged

    err = ImportError("/tmp/torchinductor_root/xx/main.so: file too short")
    assert compile_cache_damaged(RuntimeError("wrapped")) is False
    wrapped = RuntimeError("backend compiler failed")
    wrapped.__cause__ = err
    assert compile_cache_damaged(wrapped)
    with pytest.raises(RuntimeError, match="left half-written by an interrupted compile: delete the cache .*TORCHINDUCTOR_CACHE_DIR"):
        with compile_errors_explained():
            raise wrapped


def test_plot_ticks_are_plain_batch_sizes(tmp_path):
    pytest.importorskip("matplotlib")
    from fastddpm.bench.report import plot

    rows = [dict(batch=2, sampler_images_per_s=3.0, unet_images_per_s=4.0, reference_images_per_s=1.0)]
    assert plot(rows, tmp_path / "one.png") == str(tmp_path / "one.png")
    rows = [dict(batch=b, sampler_images_per_s=b, unet_images_per_s=2 * b, reference_images_per_s=b / 2) for b in (1, 8, 1024)]
    assert plot(rows, tmp_path / "three.png") and (tmp_path / "three.png").stat().st_size > 1000


def test_train_cli_help_names_every_option_and_default(capsys):
    from fastddpm.train import parser

    text = parser().format_help()
    for flag in ("--steps", "--batch-size", "--lr", "--schedule", "--fused, --no-fused", "--compile, --no-compile", "--keep",
                 "--prediction {epsilon,v,sample}", "--min-snr-gamma", "--zero-snr, --no-zero-snr", "--debug"):
        assert flag in text, flag
    flat = " ".join(text.split())
    assert "{linear,cosine,scaled_linear}" in text and "(default: 10000; digits: 3000)" in flat and "(default: None)" not in flat


@pytest.mark.slow
def test_cpu_run_end_to_end_writes_valid_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rep = bench.main(["--quick", "--device", "cpu"])  # no --json: the default results folder
    folders = list((tmp_path / "bench-results").iterdir())
    assert len(folders) == 1 and (folders[0] / "bench.json").exists() and (folders[0] / "bench.png").exists()
    out = capsys.readouterr().out
    assert "config: U-Net small built-in (CPU)" in out and "wrote bench-results/" in out
    assert "not measured on a CPU" in out and "capture -" in out
    data = json.loads((folders[0] / "bench.json").read_text())
    assert data["schema"] == bench.SCHEMA and data == json.loads(json.dumps(rep, default=str))
    assert set(data) >= {"env", "device", "kernels", "sampler", "train", "notes", "host", "config"}
    assert {"torch", "triton", "python", "commit", "date"} <= set(data["env"])
    assert any("not the product's target" in n for n in data["notes"])
    ops = {(r["op"], r["impl"]) for r in data["kernels"]}
    assert ops == {(o, i) for o in ("q_sample", "reverse_step", "loss") for i in ("fused", "eager", "compiled")} | {
        ("randn", "fused"), ("randn", "eager")}  # the draw alone, against torch.randn
    for r in data["kernels"]:
        assert r["median_ms"] > 0 and r["gbs"] > 0 and r["bytes"] == kernel_bytes(r["op"], r["shape"], getattr(torch, r["dtype"]))
        assert r["frac_copy_bw"] is None  # no copy bandwidth on a CPU: not measured, not 0
    for r in data["sampler"]:
        for key in ("unet_ms", "sampler_ms", "reference_ms", "sampler_images_per_s", "flops_per_image", "sampler_compile_s"):
            assert isinstance(r[key], (int, float)) and r[key] > 0, key
        assert "mfu" not in r
        assert r["sampler_over_unet"] == r["sampler_ms"] / r["unet_ms"]
        assert "sampler_compiled_ms" not in r  # --quick: the compiled CPU rows (a minute of compiling) are left out
    methods = [(m["method"], m["steps"]) for m in data["sampler"][-1]["methods"]]
    assert ("ddim", 50) in methods and ("dpm++2m", 10) in methods
    assert [r["impl"] for r in data["train"]] == ["fused", "reference"]
    assert all(r["images_per_s"] > 0 for r in data["train"])
    fused = data["train"][0]["images_per_s"]
    assert [r["workers"] for r in data["loader"]] == sorted({0, os.cpu_count()})  # the folder loader, alone
    for r in data["loader"]:
        assert r["images_per_s"] > 0 and r["train_step_images_per_s"] == fused
        assert r["bound"] == ("loader" if r["images_per_s"] < fused else "train step")
        assert f"loader {r['source']}, {r['workers']} workers" in out


@pytest.mark.slow
def test_cpu_compiled_sampler_row_against_the_compiled_unet():
    # the full CPU bench's compiled rows (compile=True: the update traced into the step's graph)
    # on the sampler tests' tiny U-Net: both timed, the compile apart, the ratio theirs
    from helpers import tiny_unet

    from fastddpm.bench.suites import bench_cpu_compiled
    from fastddpm.core.schedule import Schedule

    r = bench_cpu_compiled(tiny_unet(), Schedule.linear(), 2, {"steps": 2, "rounds": 1}, torch.device("cpu"))
    for key in ("unet_compiled_ms", "unet_compiled_setup_s", "sampler_compiled_ms", "sampler_compiled_compile_s"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["sampler_compiled_over_unet"] == r["sampler_compiled_ms"] / r["unet_compiled_ms"]


def test_quality_rows_table_and_plot_on_a_tiny_configuration(tmp_path):
    # the --quality pipeline end to end (generate -> shards -> metrics -> table, plot), small
    from fastddpm.bench import quality

    configs = [("DDIM η=0, 2", "ddim", dict(steps=2)), ("DDPM respaced 2", "ddpm", dict(steps=2))]
    seen = []
    rows = quality.measure("digits", "digits", tmp_path, 80, configs, progress=False, on_row=lambda r: seen.append(len(r)),
                           real=True)
    real, rows = rows[0], rows[1:]
    assert seen == [2, 3] and [r["label"] for r in rows] == [c[0] for c in configs]
    assert real["method"] == "real" and real["fd"] < min(r["fd"] for r in rows)  # 2-step samplers are far from real
    for r in rows:
        assert r["n"] == 80 and r["evaluations"] == 2 and r["fd"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert (tmp_path / "samples" / "DDIM-eta0-2" / "manifest.json").is_file()
    md = quality.table([real, *rows], "digits")
    assert md.count("\n") == 3 + len(rows) and "| DDIM η=0, 2 | 2 |" in md and "| real training images (the floor) | - |" in md
    assert quality.plot(rows, tmp_path / "q.png", "digits") == str(tmp_path / "q.png") and (tmp_path / "q.png").stat().st_size > 0
    again = quality.measure("digits", "digits", tmp_path, 80, configs[:1], progress=False)  # a rerun reuses the shards
    assert again[0]["fd"] == rows[0]["fd"] and again[0]["generate_seconds"] == rows[0]["generate_seconds"]
    # the wall time is the shards' own (each sidecar keeps its sampling time), not the rerun's reading time
    sidecar = json.loads((tmp_path / "samples" / "DDIM-eta0-2" / "shard-000000.json").read_text())
    assert sidecar["seconds"] > 0 and rows[0]["generate_seconds"] == round(sidecar["seconds"], 1)


def test_a_reused_row_made_elsewhere_says_its_wall_time_was_not_recorded(tmp_path):
    # a row whose shards predate the sidecars' seconds (as the committed DDPM-1000 shards do) and carry no
    # generate-seconds.json: the table says "not recorded" (once it said 0.1 s, the time spent reading
    # them), and nothing is written into the row's folder
    from fastddpm.bench import quality
    from fastddpm.sampling.generate import generate

    label = "DDPM respaced 2"
    folder = tmp_path / "samples" / quality.slug(label)
    generate("digits", n=80, out=folder, method="ddpm", steps=2, shard=80, batch=80, progress=False)  # as measure makes it
    for side in folder.glob("shard-*.json"):  # as a shard written before the sidecar kept its time
        meta = json.loads(side.read_text())
        assert meta.pop("seconds") >= 0  # kept by generate
        side.write_text(json.dumps(meta) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    for meta in manifest["shards"]:
        meta.pop("seconds")
    (folder / "manifest.json").write_text(json.dumps(manifest) + "\n")
    before = sorted(p.name for p in folder.iterdir())
    row, = quality.measure("digits", "digits", tmp_path, 80, [(label, "ddpm", dict(steps=2))], progress=False)
    assert row["generate_seconds"] is None and sorted(p.name for p in folder.iterdir()) == before
    assert quality.wall_time(row) == "not recorded" and quality.wall_time(dict(row, method="real")) == "-"
    assert "| not recorded |" in quality.table([row], "digits")
    (folder / "generate-seconds.json").write_text("807.7\n")  # what a bench run wrote beside such shards: still read
    assert quality.sampling_seconds(folder, manifest) == 807.7


def test_solver_table_names_the_best_row_per_budget_and_whether_it_is_separated():
    from fastddpm.bench import quality

    def row(label, steps, fd, sd, method="ddim"):
        return dict(label=label, method=method, steps=steps, evaluations=steps, fd=fd, fd_std=sd, kid=0.0, kid_std=0.0,
                    precision=1.0, recall=1.0, generate_seconds=1.0, n=2000)

    rows = [row("real", 0, 1.0, 0.1, "real"), row("A 5", 5, 10.0, 0.5), row("B 5", 5, 13.0, 0.5), row("A 8", 8, 7.0, 1.0),
            row("B 8", 8, 6.0, 1.0)]
    md = quality.solver_table(rows, "digits", "digits")
    assert "| A 5 | 5 | 5 | 10.00 ± 0.50 |" in md
    assert "- 5 steps: best A 5 (FD 10.00 ± 0.50); next B 5 (13.00 ± 0.50), 4.2σ behind: separated" in md
    assert "- 8 steps: best B 8 (FD 6.00 ± 1.00); next A 8 (7.00 ± 1.00), within 0.7σ: not separated" in md
    assert [c[1] for c in quality.SOLVER_CONFIGS[:4]] == ["ddim"] * 4 and len(quality.SOLVER_CONFIGS) == 7 * 4


def test_certify_line_is_the_smallest_budget_within_two_sigma_of_ddpm_1000():
    from fastddpm.bench import quality

    def row(label, ev, fd, sd, method="ddim", steps=None):
        return dict(label=label, method=method, steps=steps or ev, evaluations=ev, fd=fd, fd_std=sd)

    ref = row("DDPM 1000 (σ²=β)", 1000, 5.0, 0.3, "ddpm", 1000)
    rows = [row("real", 0, 1.0, 0.1, "real"), ref,
            row("A 5", 5, 7.0, 0.3), row("A 8", 8, 5.7, 0.4), row("A 10", 10, 5.1, 0.3),  # 5.7 - 5.0 = 0.7 <= 2·0.5
            row("B 5", 5, 9.0, 0.3), row("B 10", 10, 6.0, 0.3),  # never within: (6.0 - 5.0)/0.42 = 2.4σ
            row("C 5", 5, 4.0, 0.3)]  # below DDPM 1000's FD: certifies too
    lines = quality.certify(rows)
    assert lines[0] == "- A: DDPM-1000 quality at 8 evaluations (FD 5.70 ± 0.40 against 5.00 ± 0.30, 125× fewer)"
    assert lines[1].startswith("- B: not within 2σ of DDPM 1000 (FD 5.00 ± 0.30) at any budget measured (at 10 evaluations, "
                               "6.00: 2.4σ above)")
    assert lines[2].startswith("- C: DDPM-1000 quality at 5 evaluations")
    assert quality.certify(rows[2:]) == ["- certify: no DDPM 1000-step row in this table"]
    md = quality.solver_table([{**r, "kid": 0.0, "kid_std": 0.0, "precision": 1.0, "recall": 1.0, "generate_seconds": 1.0,
                                "n": 2000, "teacher_rmse": 0.01 if r["method"] == "ddim" else None} for r in rows], "digits", "d")
    assert "| A 8 | 8 | 8 | 5.70 ± 0.40 | 0.000 ± 0.000 | 1.00 | 1.00 | 0.0100 | 1 s |" in md and lines[0] in md
    assert "Inception FID" not in md  # no row has it
    fid_rows = [{**r, "kid": 0.0, "kid_std": 0.0, "precision": 1.0, "recall": 1.0, "generate_seconds": 1.0, "n": 2000,
                 "teacher_rmse": None, **({"inception_fid": 12.345} if r["label"] == "A 8" else {})} for r in rows]
    md = quality.solver_table(fid_rows, "digits", "d")
    assert "| A 8 | 8 | 8 | 5.70 ± 0.40 | 0.000 ± 0.000 | 1.00 | 1.00 | - | 12.35 | 1 s |" in md
    assert "| A 10 | 10 | 10 | 5.10 ± 0.30 | 0.000 ± 0.000 | 1.00 | 1.00 | - | - | 1 s |" in md
    assert "- 1000 steps" not in md  # the row to match is not a budget
    # Inception FID where affordable: the floor, DDPM 1000, the best row at the largest budget <= 20
    assert [r["label"] for r in quality.inception_rows(rows)] == ["real", "DDPM 1000 (σ²=β)", "A 10"]


def test_inception_on_the_digits_is_refused_before_any_sampling(tmp_path):
    from fastddpm.bench import quality

    # 360 held-out digits: FID in 2,048 features would be a singular covariance after the whole table's sampling
    with pytest.raises(ValueError, match="digits's held-out split has 360 images; FID in the Inception's 2048"):
        quality.main("digits", out=tmp_path / "q", solvers=True, inception=True)
    assert not (tmp_path / "q").exists()
    # an Inception set of at most 2,048 samples (a 2,000-sample row's once failed after 89 minutes), smaller than the
    # table's rows it extends, or larger than the training images of its floor: said before any sampling
    for flags in (dict(solvers=True), dict(solvers=True, guidance=True), dict()):
        for n in (2000, 2048, 60001):
            with pytest.raises(ValueError, match=r"inception: expected a sample count in \[2049, 60000\]: .* got " + str(n)):
                quality.main("fashion-mnist", out=tmp_path / "f", inception=n, **flags)
        with pytest.raises(TypeError, match="inception: expected the Inception rows' sample count"):
            quality.main("fashion-mnist", out=tmp_path / "f", inception=3000.0, **flags)
        assert not (tmp_path / "f").exists()
    with pytest.raises(SystemExit):  # the CLI's --inception N: an int
        bench.main(["--quality", "--data", "fashion-mnist", "--inception", "many"])


def test_inception_rows_are_drawn_at_their_own_count_and_the_shared_row_is_extended_beside_its_shards(tmp_path, monkeypatch):
    """The plumbing of --inception on a tiny table: the floor takes n_inc training images; the shared
    row keeps its shards (seeds 0..n-1) and gets seeds n..n_inc-1 in a folder beside them; another row
    is drawn again at seeds 0..n_inc-1. What reaches the Inception is, image for image, what one
    generate of seeds 0..n_inc-1 makes (the FID computation itself: tests/test_inception.py)."""
    from fastddpm.bench import quality
    from fastddpm import metrics
    from fastddpm.io.data import labelled
    from fastddpm.io.images import to_uint8
    from fastddpm.sampling.generate import generate, shard_images

    n, n_inc = 6, 11
    shared, out = tmp_path / "rows" / "digits", tmp_path / "q"
    cheap = dict(steps=2)  # the shared row's plumbing, without a 1000-step chain: the row is labelled DDPM 1000
    configs = [("DDPM 1000 (σ²=β)", "ddim", cheap), ("A 10", "dpm++2m", dict(steps=3)), ("A 5", "dpm++2m", dict(steps=2))]
    rows = [dict(label="real", method="real", evaluations=0, n=n, fd=1.0)]
    for label, method, opts in configs:
        folder = (shared if label.startswith("DDPM") else out / "samples") / quality.slug(label)
        generate("digits", n=n, out=folder, method=method, shard=4, batch=n, progress=False, **opts)
        rows.append(dict(label=label, method="ddpm" if label.startswith("DDPM") else method,
                         steps=1000 if label.startswith("DDPM") else opts["steps"],
                         evaluations=1000 if label.startswith("DDPM") else opts["steps"], n=n, fd=2.0 if "5" in label else 1.5,
                         folder=str(folder)))
    seen = []

    def evaluate(images, data, **kw):
        assert kw["features"] == "inception" and data == "digits"
        seen.append(torch.cat([torch.as_tensor(x) for x in images]))
        return dict(fd=float(len(seen)), kid=0.0, feature_network="inception-test")

    monkeypatch.setattr(metrics, "evaluate", evaluate)
    written = []
    quality.add_inception(rows, "digits", n_inc, model="digits", configs=configs, out=out, shared=shared,
                          on_row=lambda r: written.append([x.get("inception_n") for x in r]), progress=False)
    assert [r["label"] for r in rows if "inception_fid" in r] == ["real", "DDPM 1000 (σ²=β)", "A 10"]  # not A 5
    assert all(r["inception_n"] == n_inc for r in rows if "inception_fid" in r) and len(written) == 3
    assert torch.equal(seen[0], torch.as_tensor(to_uint8(labelled("digits", "train")[0][:n_inc])))
    for got, (label, method, opts) in zip(seen[1:], configs[:2]):
        one = generate("digits", n=n_inc, out=tmp_path / "one" / quality.slug(label), method=method, shard=n_inc,
                       batch=n_inc, progress=False, **opts)
        want = torch.cat([torch.as_tensor(shard_images(tmp_path / "one" / quality.slug(label), s, "npz")) for s in one["shards"]])
        assert got.shape[0] == n_inc and torch.equal(got, want), label
    more = quality.extension(shared / quality.slug(configs[0][0]), n, n_inc)
    assert more.parent == shared and json.loads((more / "manifest.json").read_text())["config"]["seeds"] == [[n, n_inc - 1]]
    assert (out / "inception" / quality.slug("A 10")).is_dir() and not (out / "inception" / quality.slug("A 5")).exists()
    quality.add_inception(rows, "digits", n_inc, model="digits", configs=configs, out=out, shared=shared, progress=False)
    assert len(seen) == 3  # measured at this count already: nothing again
    md = quality.solver_table([{**r, "fd_std": 0.1, "kid": 0.0, "kid_std": 0.0, "precision": 1.0, "recall": 1.0,
                                "generate_seconds": 1.0} for r in rows], "digits", "d")
    assert f"| Inception FID ↓ ({n_inc:,} samples) |" in md


@pytest.mark.parametrize("flags", [dict(solvers=True), dict(solvers=True, guidance=True), dict()], ids=["solvers", "guidance", "plain"])
def test_a_missing_dataset_is_said_before_any_sampling(tmp_path, monkeypatch, flags):
    """Every table is measured against the real held-out images: without them, the error comes
    before the teacher's and the rows' sampling (it once came after 14 minutes) and before the
    out folder is made."""
    from fastddpm.bench import quality
    from fastddpm.io import data

    def missing(split, root=None):
        raise FileNotFoundError("Fashion-MNIST not found under /nowhere: install Debian's package")

    def sampled(*a, **k):
        raise AssertionError("sampling started before the dataset was read")

    monkeypatch.setattr(data, "fashion_mnist", missing)
    monkeypatch.setattr(quality, "Teacher", sampled)
    monkeypatch.setattr(quality, "measure", sampled)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        quality.main("fashion-mnist", out=tmp_path / "q", **flags)
    assert not (tmp_path / "q").exists()


def test_teacher_error_falls_with_steps_and_is_none_for_a_stochastic_chain(tmp_path):
    from fastddpm.bench import quality

    t = quality.Teacher("digits", tmp_path, n=16, steps=200)
    assert t.x.shape == (16, 1, 8, 8) and 0 <= t.self_rmse < 0.05
    coarse, fine = t.error("ddim", dict(steps=5)), t.error("ddim", dict(steps=50))
    assert fine[0] < coarse[0] / 3  # a first-order solver converging on the teacher's ODE
    assert t.error("unipc", dict(steps=10, order=3))[0] < coarse[0]
    assert t.error("ddpm", dict(steps=10)) is None and t.error("ddim", dict(steps=10, eta=1.0)) is None
    again = quality.Teacher("digits", tmp_path, n=16, steps=200)  # cached: read, not recomputed
    assert torch.equal(again.x, t.x) and again.self_rmse == t.self_rmse


def test_guidance_sweep_rows_table_and_plot_on_a_tiny_conditional_model(tmp_path):
    # the --quality --guidance pipeline end to end on a 2-step-trained conditional digits model:
    # labels k mod 10 through generate, class accuracy, per-class FD, the bootstrap spread,
    # model evaluations counting both halves of a guided step only, the table's verdict line
    from fastddpm import TrainConfig, Trainer, UNet, UNetConfig
    from fastddpm.bench import quality
    from fastddpm.io.data import load_labelled

    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=16, channel_mult=(1, 2), layers_per_block=1,
                     attn_resolutions=(), norm_groups=8, num_classes=10)
    run = tmp_path / "run"
    Trainer(UNet(cfg), load_labelled("digits"), TrainConfig(steps=2, batch_size=8, sample_every=0), out_dir=run, device="cpu",
            progress=False).fit()
    configs = [("DDIM 4, w=0", "ddim", dict(steps=4, guidance=0.0)), ("DDIM 4, w=3", "ddim", dict(steps=4, guidance=3.0)),
               ("DDIM 4, w=3 in (300, 800]", "ddim", dict(steps=4, guidance=3.0, guidance_interval=(300, 800)))]
    rows = quality.measure(str(run), "digits", tmp_path, 40 * 10, configs, progress=False, real=True, labels=True)
    real, rows = rows[0], rows[1:]
    # digits' feature net on 400 real training digits: near its test accuracy, far above chance
    assert real["class_accuracy"] > 0.8 and 0.8 < real["feature_network_accuracy"] <= 1
    # ddim 4 trailing: t = 999, 749, 499, 249; the interval guides 749 and 499 only
    assert [r["evaluations"] for r in rows] == [4, 8, 6]
    for r in [real, *rows]:
        assert r["fd_std"] > 0 and r["fd"] > 0 and 0 <= r["class_accuracy"] <= 1
        # digits' held-out split has about 36 images a class, fewer than its 64 features: no per-class FD
        assert r["fd_per_class_mean"] is None
    assert real["fd"] < min(r["fd"] for r in rows)  # an untrained model is far from real digits
    labels = json.loads((tmp_path / "samples" / "DDIM-4-w3" / "manifest.json").read_text())["config"]["labels"]
    assert labels == "seed mod num_classes"
    md = quality.guided_table([real, *rows], "digits")
    assert md.count("\n| ") == 1 + len(rows) and "| DDIM 4, w=3 | 8 |" in md and "FD is lowest at" in md
    assert all(line.split(" | ")[-2] == "-" for line in md.splitlines()[2:2 + len(rows)])  # the per-class FD column
    assert quality.guided_plot([real, *rows], tmp_path / "g.png", "digits") == str(tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0


def test_fd_spread_is_the_bootstrap_deviation_and_shrinks_with_more_samples():
    # the noise measure the guidance table prints: resampling 4x as many images narrows FD's
    # bootstrap spread (by about 2x: sqrt(n)); seeded, so the same figure twice
    from fastddpm.bench import quality
    from fastddpm.io.data import labelled
    from fastddpm.io.images import to_uint8

    x = to_uint8(labelled("digits", "train")[0])
    small, large = quality.fd_spread([x[:200]], "digits"), quality.fd_spread([x[:800]], "digits")
    assert small == quality.fd_spread([x[:200]], "digits")
    assert large < 0.75 * small, (small, large)
