"""Data sources (fastddpm.io.sources): image folders, uint8 arrays and CIFAR batches written here
in their real formats; the fitting convention against guided-diffusion's own function; training
from a streamed folder equal to training from memory; the flip addressed; bad input refused."""

import hashlib
import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from fastddpm import UNet, UNetConfig
from fastddpm import kernels as K
from fastddpm.io import checkpoint as ckpt
from fastddpm.io import sources
from fastddpm.training.trainer import TrainConfig, Trainer

Image = pytest.importorskip("PIL.Image")

TINY = dict(base_channels=16, channel_mult=(1, 2), layers_per_block=1, attn_resolutions=(4,), norm_groups=8)


def _write(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """Two classes in nested folders, PNG / JPEG / BMP / GIF, several sizes, all RGB; a README to skip."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    shapes = [(12, 10), (9, 16), (8, 8), (20, 20)]
    for c, cls in enumerate(("zebra", "ant")):
        for i, (h, w) in enumerate(shapes):
            ext = ("png", "jpg", "bmp", "gif")[i]
            sub = root / cls / ("deep" if i == 3 else "")
            _write(sub / f"{i}.{ext}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (root / "README.txt").write_text("not an image")
    return root


def test_folder_labels_sizes_and_order(folder):
    src = sources.open_source(str(folder), image_size=8, labelled=True, workers=1)
    assert (src.n, src.channels, src.size) == (8, 3, 8) and src.skipped == 1
    assert src.classes == ["ant", "zebra"]  # sorted subfolder names: ImageFolder's convention
    names = [p.relative_to(folder).as_posix() for p in src.paths]
    assert names == sorted(names)  # sorted paths, found recursively
    assert src.labels.tolist() == [0 if n.startswith("ant") else 1 for n in names]
    x = src.read(torch.arange(8))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 8, 8)
    # every image fitted exactly as guided-diffusion's function fits it (PIL decodes the file again)
    for i, p in enumerate(src.paths):
        with Image.open(p) as im:
            want = sources.fit(im.convert("RGB"), 8)
        assert torch.equal(x[i], torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))
    # the in-memory copy and the streamed reads are the same bytes
    streamed = sources.open_source(str(folder), image_size=8, labelled=True, memory_limit=0, workers=1)
    assert not streamed.in_memory() and streamed.fingerprint == src.fingerprint
    assert torch.equal(streamed.read([5, 0, 5]), x[[5, 0, 5]])


def test_fit_is_guided_diffusions_center_crop_arr(monkeypatch):
    # guided_diffusion.image_datasets imports mpi4py and blobfile at the top; center_crop_arr uses neither
    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=None))
    monkeypatch.setitem(sys.modules, "blobfile", types.ModuleType("blobfile"))
    gd = pytest.importorskip("guided_diffusion.image_datasets")
    rng = np.random.default_rng(1)
    for (h, w), s, mode in [((100, 70), 16, "RGB"), ((33, 64), 32, "RGB"), ((64, 64), 64, "RGB"), ((130, 257), 32, "L"),
                            ((31, 40), 31, "L")]:
        arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        img = Image.fromarray(arr, mode)
        np.testing.assert_array_equal(sources.fit(img, s), gd.center_crop_arr(img, s))


def test_grey_and_rgb_need_channels(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path / "g.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    _write(tmp_path / "c.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="mixes grey .* and colour .*--channels"):
        sources.open_source(str(tmp_path))
    grey = sources.open_source(str(tmp_path), channels=1)
    rgb = sources.open_source(str(tmp_path), channels=3)
    assert grey.read([0, 1]).shape == (2, 1, 8, 8) and rgb.read([0, 1]).shape == (2, 3, 8, 8)
    g = np.array(Image.open(tmp_path / "g.png"))  # sorted: c.png is 0, g.png is 1
    assert all(torch.equal(rgb.read([1])[0, i], torch.from_numpy(g)) for i in range(3))  # grey replicated
    c = np.array(Image.open(tmp_path / "c.png").convert("L"))  # PIL's ITU-R 601 luma
    assert torch.equal(grey.read([0])[0, 0], torch.from_numpy(c))


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts_and_labels(tmp_path, layout):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 3 if layout != "nhw" else 1, 10, 10), dtype=np.uint8)
    stored = {"nhwc": x.transpose(0, 2, 3, 1), "nchw": x, "nhw": x[:, 0]}[layout]
    y = np.arange(6) % 3
    np.savez(tmp_path / "a.npz", images=stored, labels=y)
    src = sources.open_source(str(tmp_path / "a.npz"))
    assert torch.equal(src.read(torch.arange(6)), torch.from_numpy(x)) and src.labels.tolist() == y.tolist()
    np.save(tmp_path / "b.npy", stored)
    assert torch.equal(sources.open_source(str(tmp_path / "b.npy")).read(torch.arange(6)), torch.from_numpy(x))
    fitted = sources.open_source(str(tmp_path / "a.npz"), image_size=5)  # halved by BOX, as a folder's would be
    hwc = x[2].transpose(1, 2, 0)
    pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
    assert fitted.size == 5 and torch.equal(fitted.read([2])[0], torch.from_numpy(np.ascontiguousarray(np.atleast_3d(
        sources.fit(pil, 5)).transpose(2, 0, 1))))


def _cifar_batch(path, n, rng, key=b"labels", classes=10):
    d = {b"batch_label": b"training batch", key: rng.integers(0, classes, n).tolist(),
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)  # the protocol the published batches use
    return d


def test_cifar10_and_100_python_batches(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [_cifar_batch(root / f"data_batch_{i}", 3, rng) for i in range(1, 6)]
    test = _cifar_batch(root / "test_batch", 2, rng)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    train = sources.open_source(str(tmp_path))  # the folder above, or the batches folder itself
    assert train.n == 15 and train.classes[3] == "c3"
    want = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32
    assert torch.equal(train.read(torch.arange(15)), torch.from_numpy(want))
    assert train.labels.tolist() == sum((b[b"labels"] for b in batches), [])
    t = sources.open_source(str(root), split="test")
    assert t.n == 2 and t.labels.tolist() == test[b"labels"]
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    tr = _cifar_batch(c100 / "train", 4, rng, key=b"fine_labels", classes=100)
    _cifar_batch(c100 / "meta", 1, rng)
    s = sources.open_source(str(c100))
    assert s.labels.tolist() == tr[b"fine_labels"]


def test_cifar_batch_is_data_never_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    hit = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(hit), "w"))

    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refused to build io.open|refused to build builtins"):
        sources.open_source(str(root))
    assert not hit.exists()


def test_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        sources.open_source(str(tmp_path / "empty"))
    rng = np.random.default_rng(5)
    bad = tmp_path / "trunc"
    _write(bad / "a.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    _write(bad / "b.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    data = (bad / "b.png").read_bytes()
    (bad / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    (bad / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"2 of 3 files .* could not be decoded: .*b\.png .*c\.jpg"):
        sources.open_source(str(bad))
    small = tmp_path / "small"
    _write(small / "a.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    _write(small / "b.png", rng.integers(0, 256, (8, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"1 images .* smaller than --image-size 10 \(e.g. .*b\.png, 12x8\)"):
        sources.open_source(str(small), image_size=10)
    with pytest.raises(ValueError, match="not all square and of one size"):
        sources.open_source(str(small))
    with pytest.raises(ValueError, match="lie in .* itself"):
        sources.open_source(str(small), image_size=8, labelled=True)
    np.savez(tmp_path / "x.npz", pictures=np.zeros((2, 8, 8), np.uint8), other=np.zeros(2))
    with pytest.raises(ValueError, match="holds no images array"):
        sources.open_source(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "l.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        sources.open_source(str(tmp_path / "l.npz"))
    np.savez(tmp_path / "f.npz", images=np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        sources.open_source(str(tmp_path / "f.npz"))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain numpy array"):
        sources.open_source(str(tmp_path / "o.npy"))
    np.savez(tmp_path / "u.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no labels"):
        sources.open_source(str(tmp_path / "u.npz"), labelled=True)
    with pytest.raises(ValueError, match="neither a built-in set .* nor an existing path"):
        sources.open_source(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="channels: expected 1"):
        sources.open_source(str(tmp_path / "u.npz"), channels=2)


def _tiny(c=3, classes=None):
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=c, out_channels=c, sample_size=8, num_classes=classes, **TINY))


def _params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


CFG = TrainConfig(steps=4, batch_size=6, hflip=True, log_every=1, sample_every=0, checkpoint_every=2, lr=1e-3, warmup=1)


def test_streamed_folder_trains_exactly_as_in_memory_and_resumes(folder, tmp_path):
    mem = Trainer(_tiny(classes=2), sources.open_source(str(folder), 8, labelled=True), CFG, device="cpu", progress=False)
    mem.fit()
    streamed_src = sources.open_source(str(folder), 8, labelled=True, memory_limit=0)
    tr = Trainer(_tiny(classes=2), streamed_src, CFG, device="cpu", progress=False, workers=2, out_dir=tmp_path / "run")
    assert tr.source is not None
    tr.fit(2)  # stop half way, then resume into a new Trainer (and new workers)
    again = Trainer(_tiny(classes=2), streamed_src, CFG, device="cpu", progress=False, workers=0, out_dir=tmp_path / "run",
                    resume=True)
    assert again.step == 2
    again.fit()
    for a, b in zip(_params(mem), _params(again)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a resume on other images is refused: the source's content hash is the run's data
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "ant" / "new.png")
    with pytest.raises(ValueError, match="data"):
        Trainer(_tiny(classes=2), sources.open_source(str(folder), 8, labelled=True, memory_limit=0), CFG, device="cpu",
                progress=False, out_dir=tmp_path / "run", resume=True)


def test_flip_and_order_are_a_pure_function_of_the_address(folder):
    src = sources.open_source(str(folder), 8)
    tr = Trainer(_tiny(), src, CFG, device="cpu", progress=False)
    plain = Trainer(_tiny(), src, TrainConfig(**{**CFG.__dict__, "hflip": False}), device="cpu", progress=False)
    images = src.images()
    flips = []
    for step in (0, 1, 3):
        x0, t, seeds, _ = tr._batch(step)
        x0b, tb, _, _ = tr._batch(step)
        assert torch.equal(x0, x0b) and torch.equal(t, tb)
        k = (step * 1 + 0) * CFG.batch_size + torch.arange(CFG.batch_size)  # sample counters of the step
        bit = K.philox(torch.tensor(CFG.seed), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k),
                       torch.full_like(k, K.STREAM_FLIP))[0] & 1
        N = src.n
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(CFG.seed * 7919 + step * CFG.batch_size // N))
        idx = perm[k % N] if (k // N).unique().numel() == 1 else None
        want = plain._batch(step)[0]
        if idx is not None:
            assert torch.equal(want, images[idx])
        assert torch.equal(x0, torch.where(bit.view(-1, 1, 1, 1) > 0, want.flip(-1), want))
        flips += bit.tolist()
    assert 0 < sum(flips) < len(flips)


def test_flip_rate_is_one_half():
    k = torch.arange(200_000)
    bit = K.philox(torch.tensor(3), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k), torch.full_like(k, K.STREAM_FLIP))[0] & 1
    # binomial(200k, 1/2): sigma = 224; 6 sigma = 1342
    assert abs(int(bit.sum()) - 100_000) < 1342


def test_flops_of_the_ddpm_cifar10_unet_match_the_published_count():
    from fastddpm.models.unet import forward_flops
    from fastddpm.train import SIZED

    model = UNet(SIZED["ddpm-cifar10"])
    assert model.num_parameters() == 35_746_307
    # Fang et al. 2023 (Diff-Pruning, Table 1) count 6.1 G multiply-adds for this network at 32x32
    assert abs(forward_flops(model) / 2 / 6.1e9 - 1) < 0.02


def test_train_cli_on_a_folder(folder, tmp_path, capsys):
    from fastddpm.train import main

    cfg = tmp_path / "unet.json"
    cfg.write_text(json.dumps(dict(in_channels=3, out_channels=3, sample_size=8, **{k: list(v) if isinstance(v, tuple) else v
                                                                                      for k, v in TINY.items()})))
    tr = main(["--data", str(folder), "--image-size", "8", "--model-config", str(cfg), "--steps", "2", "--batch-size", "4",
               "--hflip", "--conditional", "--sample-every", "0", "--sample-batch", "2", "--out", str(tmp_path / "run"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert "8 images 3x8x8, 2 classes" in err and "left-right flips" in err
    assert f"{tr.model.num_parameters():,} parameters" in err and "GFLOPs a forward pass per image" in err
    _, meta = ckpt.read(ckpt.latest(tmp_path / "run" / "checkpoints"))
    assert meta["train_config"]["hflip"] is True and meta["identity"]["data"].startswith("source:")
    assert meta["model_config"]["num_classes"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "8", "--model", "digits"], "sized for the built-in digits images"),
    (["--image-size", "8"], "no preset is sized for 8x8 images"),
    (["--image-size", "8", "--model-config", "{cfg}"], "names \\['widths'\\], not UNetConfig fields"),
    (["--image-size", "64"], "smaller than --image-size 64"),
])
def test_train_cli_refusals(folder, tmp_path, argv, message, capsys):
    from fastddpm.train import main

    (tmp_path / "bad.json").write_text(json.dumps({"widths": [1]}))
    argv = [a.replace("{cfg}", str(tmp_path / "bad.json")) for a in argv]
    with pytest.raises(ValueError, match=message):
        main(["--data", str(folder), *argv, "--steps", "1", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()  # nothing written before the refusal


def test_eval_against_your_own_images(tmp_path):
    """eval --reference FOLDER in the shipped network its size fits: the reference against its own
    images is FD 0, against others > 0, and its features are cached by content hash."""
    from fastddpm import eval as eval_cli

    from fastddpm.metrics import CACHE

    rng = np.random.default_rng(6)
    ref = tmp_path / "ref"
    imgs = rng.integers(0, 256, (100, 8, 8), dtype=np.uint8)  # more than the 64 features
    for i, a in enumerate(imgs):
        _write(ref / f"{i:03d}.png", a)
    np.savez(tmp_path / "same.npz", images=imgs[:, :, :, None])
    r = eval_cli.main([str(tmp_path / "same.npz"), "--reference", str(ref), "--json", str(tmp_path / "r.json")])
    assert r["reference_source"] == str(ref) and r["data"] == "digits" and abs(r["fd"]) < 1e-6
    cached = list(CACHE.glob(f"source-{r['reference_fingerprint'][:32]}-*.safetensors"))
    assert len(cached) == 1
    np.savez(tmp_path / "other.npz", images=np.clip(imgs.astype(int) + 60, 0, 255).astype(np.uint8))
    r2 = eval_cli.main([str(tmp_path / "other.npz"), "--reference", str(ref), "--json", str(tmp_path / "r2.json")])
    assert r2["fd"] > 1.0 and r2["reference_fingerprint"] == r["reference_fingerprint"]
    assert list(CACHE.glob(f"source-{r['reference_fingerprint'][:32]}-*.safetensors")) == cached


def test_eval_reference_refusals(folder, tmp_path):
    from fastddpm import eval as eval_cli

    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shipped feature networks take only .* these are RGB 8x8.*--features inception"):
        eval_cli.main([str(tmp_path / "s.npz"), "--reference", str(folder), "--image-size", "8"])
    with pytest.raises(ValueError, match="smaller than --image-size 16"):
        eval_cli.main([str(tmp_path / "s.npz"), "--reference", str(folder), "--image-size", "16"])
    assert not any(tmp_path.glob("*.json"))


def test_generate_eval_takes_a_reference_path(tmp_path):
    from fastddpm.sampling.generate import _check_eval

    rng = np.random.default_rng(7)
    np.savez(tmp_path / "ref.npz", images=rng.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    src = _check_eval(str(tmp_path / "ref.npz"), (1, 8, 8))
    assert src.n == 5 and src.size == 8
    with pytest.raises(ValueError, match="digits's feature network takes 1x8x8"):
        _check_eval(str(tmp_path / "ref.npz"), (3, 8, 8))
    with pytest.raises(ValueError, match="or a path to your real images"):
        _check_eval("cifar11", (1, 8, 8))


@pytest.mark.slow
def test_ddp_two_ranks_on_a_streamed_folder_equal_one_process(folder, tmp_path, procs, monkeypatch):
    # as test_trainer's DDP test, with the images read from a folder by the loader's workers
    # (FASTDDPM_DATA_MEMORY=0: streamed even though small): each rank reads its own slice of
    # the addressed batch, flips included; lr = 0 makes Adam's moment a pure gradient comparison.
    cfg = tmp_path / "unet.json"
    cfg.write_text(json.dumps(dict(in_channels=3, out_channels=3, sample_size=8, **{k: list(v) if isinstance(v, tuple) else v
                                                                                      for k, v in TINY.items()})))
    common = ["--data", str(folder), "--image-size", "8", "--model-config", str(cfg), "--hflip", "--workers", "1",
              "--steps", "2", "--lr", "0", "--log-every", "1", "--checkpoint-every", "2", "--sample-every", "0",
              "--device", "cpu"]
    ddp = procs.run("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29544", "-m", "fastddpm.train",
                    *common, "--batch-size", "3", "--out", tmp_path / "ddp",
                    env={"OMP_NUM_THREADS": "1", "FASTDDPM_DATA_MEMORY": "0"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from fastddpm.train import main

    monkeypatch.setenv("FASTDDPM_DATA_MEMORY", "0")
    tr = main([*common, "--batch-size", "6", "--out", str(tmp_path / "one")])
    assert tr.source is not None  # streamed
    two, meta = ckpt.read(ckpt.latest(tmp_path / "ddp" / "checkpoints"))
    one, meta1 = ckpt.read(ckpt.latest(tmp_path / "one" / "checkpoints"))
    assert meta["world"] == 2 and meta["identity"]["data"] == meta1["identity"]["data"]
    moments = [k for k in one if k.endswith(".exp_avg")]
    assert moments
    for k in moments:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-7)
