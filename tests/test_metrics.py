"""Sample-quality metrics: the mathematics against scipy and closed forms, and sanity on real
data (the metric must measure something): noise, blur and dropped modes move it, two halves
of one split do not. Fashion-MNIST checks run where Debian's package is installed (CI installs it)."""

import json

import numpy as np
import pytest
import torch
from scipy import linalg

from fastddpm.io import data as datasets
from fastddpm import metrics, to_uint8
from fastddpm.eval import main as eval_main
from fastddpm.io.images import read_png, write_png
from fastddpm.metrics import features, stats

needs_fm = pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache of the real splits' features for the module: computed once, as in use."""
    return tmp_path_factory.mktemp("metrics-cache")


def _psd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ------------------------------------------------------------------ the mathematics


def test_matrix_square_root_matches_scipy():
    a = _psd(64, 0)
    torch.testing.assert_close(stats.sqrtm_psd(a), torch.from_numpy(linalg.sqrtm(a.numpy()).real), rtol=1e-9, atol=1e-10)


def test_frechet_distance_of_gaussians_is_the_closed_form():
    d = 32
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    c1, c2 = _psd(d, 1), _psd(d, 2)
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(c1) + torch.trace(c2)
                     - 2 * np.trace(linalg.sqrtm(c1.numpy() @ c2.numpy()).real))
    assert stats.frechet(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)
    # diagonal covariances: Σ (σ1 - σ2)² + ‖μ1 - μ2‖², by hand
    s1, s2 = torch.rand(d, dtype=torch.float64) + 0.5, torch.rand(d, dtype=torch.float64) + 0.5
    by_hand = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert stats.frechet(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(by_hand, rel=1e-12)
    assert stats.frechet(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_streaming_moments_equal_the_batch_ones():
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = stats.Moments(16)
    for chunk in x.split(137):
        m.add(chunk)
    mu, cov = m.mean_cov()
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(cov, torch.from_numpy(np.cov(x.numpy(), rowvar=False)))


def test_prdc_equals_its_definition_by_brute_force():
    g = torch.Generator().manual_seed(4)
    real, fake = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randn(50, 5, generator=g, dtype=torch.float64) + 0.3
    k = 3

    def radius(x, i):
        d = sorted(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i)
        return d[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, i) for i in range(len(fake))]
    inside = [[float((f - real[j]).norm()) <= rr[j] for j in range(len(real))] for f in fake]
    p = stats.prdc(real, fake, k)
    assert p.precision == pytest.approx(np.mean([any(row) for row in inside]))
    assert p.density == pytest.approx(np.mean([sum(row) for row in inside]) / k)
    assert p.coverage == pytest.approx(np.mean([any(inside[i][j] for i in range(len(fake))) for j in range(len(real))]))
    assert p.recall == pytest.approx(np.mean([any(float((r - fake[j]).norm()) <= rf[j] for j in range(len(fake))) for r in real]))


# ------------------------------------------------------------------ sanity on real data


def _u8(x):
    return to_uint8(x)


def _noisy(x, sigma, seed=0):
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def _blur(x, r):
    k = 2 * r + 1
    return torch.nn.functional.avg_pool2d(x, k, stride=1, padding=r, count_include_pad=False)


@pytest.mark.parametrize("data", ["digits", pytest.param("fashion-mnist", marks=needs_fm)])
def test_fd_is_small_between_splits_and_grows_with_damage(data, cache):
    # FD(test damaged, test) grows with the damage; FD(train, test) is below the clearly damaged
    # ones (on the digits, 360 reference images in 64 dimensions give every FD a finite-sample
    # floor, so the lightest damage is not the comparison there)
    train, _ = datasets.labelled(data, "train")
    test, ytest = datasets.labelled(data, "test")
    n = min(len(test), 3000)
    train, test, ytest = train[:n], test[:n], ytest[:n]
    ev = lambda x: metrics.evaluate(_u8(x), data, cache=cache, what=("fd",))["fd"]  # noqa: E731
    base = ev(train)
    noise = [ev(_noisy(test, s)) for s in (0.1, 0.2, 0.4, 0.8)]
    blur = [ev(_blur(test, r)) for r in (1, 2, 3)]
    dropped = ev(test[ytest != 3])  # one class removed
    assert all(a < b for a, b in zip(noise, noise[1:])), noise
    assert all(a < b for a, b in zip(blur, blur[1:])), blur
    assert ev(test) < min(noise[0], blur[0], dropped)  # the split itself: the floor
    assert base < noise[2] and base < blur[1], (base, noise, blur, dropped)


@pytest.mark.parametrize("data", ["digits", pytest.param("fashion-mnist", marks=needs_fm)])
def test_kid_of_two_halves_of_one_split_is_zero_within_its_std(data, tmp_path):
    test, _ = datasets.labelled(data, "test")
    test = test[:2000]
    net = features.load(data)
    a = metrics.FeatureStream(data, net).add(test[0::2]).all()
    b = metrics.FeatureStream(data, net).add(test[1::2]).all()
    mean, std = stats.kid(a, b, subsets=50, subset_size=len(a) // 2)
    assert abs(mean) < 3 * std, (mean, std)
    noisy = metrics.FeatureStream(data, net).add(_noisy(test[1::2], 1.0)).all()
    mean_n, std_n = stats.kid(a, noisy, subsets=50, subset_size=len(a) // 2)
    assert mean_n > 3 * std_n and mean_n > mean + 3 * std_n, (mean_n, std_n, mean, std)


@pytest.mark.parametrize("data", ["digits", pytest.param("fashion-mnist", marks=needs_fm)])
def test_precision_and_recall_react_to_mode_dropping_and_to_noise(data, cache):
    train, ytrain = datasets.labelled(data, "train")
    train, ytrain = train[:2000], ytrain[:2000]
    ev = lambda x: metrics.evaluate(_u8(x), data, cache=cache, what=("prdc",))  # noqa: E731
    full = ev(train)
    half = ev(train[ytrain < 5])  # five of ten classes: the modes dropped
    noisy = ev(_noisy(train, 1.0))
    assert half["recall"] < full["recall"] - 0.2, (half, full)
    assert noisy["precision"] < full["precision"] - 0.2, (noisy, full)
    assert half["precision"] > full["precision"] - 0.1  # what remains is still realistic


@needs_fm
def test_fashion_mnist_feature_network_is_accurate():
    card = features.card("fashion-mnist")
    assert card["test_accuracy"] >= 0.90 and card["command"].startswith("python -m fastddpm.metrics.train_features")
    assert features.weights_path("fashion-mnist").stat().st_size < 2 * 2**20
    test, y = datasets.labelled("fashion-mnist", "test")
    net = features.load("fashion-mnist")
    with torch.no_grad():
        acc = float((net(test[:2000]).argmax(1) == y[:2000]).double().mean())
    assert acc >= 0.88  # the shipped weights, re-measured on a fifth of the test split


# ------------------------------------------------------------------ the CLI and bad input


def test_eval_cli_reads_pngs_and_npz_and_writes_json(tmp_path, capsys):
    test, _ = datasets.labelled("digits", "test")
    u8 = to_uint8(test)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(u8[:200]):
        write_png(img, folder / f"{i:05d}.png")
    assert torch.equal(read_png(folder / "00007.png"), u8[7])
    rep = eval_main([str(folder), "--data", "digits", "--kid-subsets", "5"])
    written = json.loads((folder / "eval-digits-test.json").read_text())
    assert written == json.loads(json.dumps(rep)) and rep["samples"] == 200
    assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage", "feature_network", "split"} <= set(rep)
    assert "not Inception FID" in capsys.readouterr().out
    np.savez(tmp_path / "s.npz", images=u8[:200].permute(0, 2, 3, 1).numpy())  # NHWC, as the shards
    rep2 = eval_main([str(tmp_path / "s.npz"), "--data", "digits", "--kid-subsets", "5"])
    assert rep2["fd"] == pytest.approx(rep["fd"], rel=1e-5)  # NHWC input: other fp32 conv rounding


def test_eval_bad_input_is_a_clear_error(tmp_path):
    test, _ = datasets.labelled("digits", "test")
    u8 = to_uint8(test)
    with pytest.raises(ValueError, match="samples: expected 8x8 images for 'digits', got 9x9"):
        metrics.evaluate(torch.zeros(100, 1, 9, 9, dtype=torch.uint8), "digits")
    with pytest.raises(ValueError, match=r"samples: expected single-channel images"):
        metrics.evaluate(u8.repeat(1, 3, 1, 1)[:, :2], "digits")
    with pytest.raises(ValueError, match=r"samples: expected uint8 images with values 0..255, got torch.float32 .*fastddpm.to_uint8"):
        metrics.evaluate(test, "digits")
    with pytest.raises(ValueError, match="samples: 50 images give a singular 64x64 feature covariance"):
        metrics.evaluate(u8[:50], "digits")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="SAMPLES: .*empty holds no PNG images"):
        eval_main([str(tmp_path / "empty"), "--data", "digits"])
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(80):
        write_png(u8[i], bad / f"{i:03d}.png")
    raw = (bad / "005.png").read_bytes()
    (bad / "005.png").write_bytes(raw[:40] + bytes([raw[40] ^ 0xFF]) + raw[41:])
    with pytest.raises(ValueError, match="005.png: damaged PNG"):
        eval_main([str(bad), "--data", "digits"])
    with pytest.raises(SystemExit):
        eval_main([str(bad), "--data", "cifar10"])


def test_missing_weights_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m fastddpm.metrics.train_features --data digits"):
        features.load("digits")


def test_feature_network_training_is_deterministic(tmp_path):
    from fastddpm.metrics.train_features import RECIPES, train

    threads = torch.get_num_threads()
    saved = dict(RECIPES["digits"])
    torch.set_num_threads(1)
    RECIPES["digits"].update(epochs=2)
    try:
        a = train("digits", seed=0, out=tmp_path / "a", progress=False)
        b = train("digits", seed=0, out=tmp_path / "b", progress=False)
    finally:
        RECIPES["digits"].update(saved)
        torch.set_num_threads(threads)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert (tmp_path / "a" / "digits.safetensors").read_bytes() == (tmp_path / "b" / "digits.safetensors").read_bytes()


def test_numpy_shards_are_read_like_tensors():
    # generate's shards come back as NumPy NHWC uint8: the metrics take them as they are
    u8 = torch.randint(0, 256, (5, 8, 8, 1), dtype=torch.uint8)
    torch.testing.assert_close(metrics.check_batch(u8.numpy(), "digits"), metrics.check_batch(u8, "digits"), rtol=0, atol=0)
    with pytest.raises(TypeError, match="samples: expected a tensor or NumPy array"):
        metrics.check_batch([[0]], "digits")


def test_a_damaged_reference_cache_is_computed_again(tmp_path, capsys):
    from fastddpm.metrics import features, reference_features

    good = reference_features("digits", "test", cache=tmp_path)
    path = tmp_path / f"digits-test-{features.network_hash('digits')}.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated: safetensors cannot read it
    again = reference_features("digits", "test", cache=tmp_path)
    err = capsys.readouterr().err
    assert f"metrics: the cache {path} is damaged" in err and "computing it again" in err
    torch.testing.assert_close(again.all(), good.all())
    assert reference_features("digits", "test", cache=tmp_path).moments.n == good.moments.n  # the new cache reads


def test_class_accuracy_and_per_class_fd_on_labelled_samples():
    from fastddpm.io.data import labelled

    images, labels = labelled("digits", "train")  # real digits with their true labels: the network recovers them
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    # against the train split: the digits' test split has ~36 images a class, under the 64 feature dimensions
    right = metrics.evaluate(u8, "digits", "train", labels=labels)
    wrong = metrics.evaluate(u8, "digits", "train", labels=(labels + 1) % 10)
    assert right["class_accuracy"] > 0.9 and wrong["class_accuracy"] < 0.2
    assert right["fd_per_class_mean"] is not None and len(right["fd_per_class"]) == 10
    assert right["fd_per_class_mean"] < wrong["fd_per_class_mean"]  # each class's features against that class's
    few = metrics.evaluate(u8[:300], "digits", "train", labels=labels[:300])  # ~30 a class < 64 dimensions: no per-class FD
    assert few["fd_per_class_mean"] is None and few["class_accuracy"] > 0.9
    with pytest.raises(ValueError, match="labels: expected 1437 integer labels"):
        metrics.evaluate(u8, "digits", labels=labels[:5])
    with pytest.raises(ValueError, match=r"labels: expected classes in \[0, 10\)"):
        metrics.evaluate(u8, "digits", labels=labels + 10)
