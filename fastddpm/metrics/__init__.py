"""fastddpm.metrics: sample quality measured offline, in the features of a classifier trained here
or in the FID Inception.

    from fastddpm.metrics import evaluate
    report = evaluate(images_uint8, data="fashion-mnist")   # FD, KID, precision/recall/density/coverage
    report = evaluate(images_uint8, data="fashion-mnist", features="inception")   # Inception FID and KID

In the shipped networks' features the numbers compare samplers, models and settings *with each
other*, on the same data and network (its hash is in every report), not with published FID.
features="inception" is the field's FID network (fastddpm.metrics.inception: found offline, in
pytorch-fid's conventions); `reference=` then also takes published statistics (mu, sigma .npz).
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import features, inception, stats
from . import features as _features  # (evaluate's features= argument shadows the module name)
from .stats import PRDC, Moments, frechet, frechet_moments, kid, prdc
from ..io.sources import Source, open_source

__all__ = ["FEATURES", "PRDC", "Moments", "evaluate", "features", "inception", "frechet", "frechet_moments", "kid", "prdc",
           "reference_features", "stats"]

FEATURES = ("shipped", "inception")  # the data set's own small network, or the FID Inception

CACHE = Path(os.environ.get("FASTDDPM_CACHE", Path.home() / ".cache" / "fastddpm")) / "metrics"


def check_batch(x: torch.Tensor, data: str, what: str = "samples") -> torch.Tensor:
    """uint8 images (a tensor or NumPy array: N, 1, S, S or N, S, S, 1 or N, S, S) of data's size -> (N, 1, S, S)
    float32 in [-1, 1]; anything else is a clear error."""
    S = features.CONFIGS[data].image_size
    if isinstance(x, np.ndarray):  # generate's shards (shard_images) are NumPy
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor or NumPy array of uint8 images, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        raise ValueError(f"{what}: expected uint8 images with values 0..255, got {x.dtype} with values in [{lo:.3g}, {hi:.3g}] "
                         f"(for samples in [-1, 1] use fastddpm.to_uint8 first)")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC, as the sample shards are written
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{what}: expected single-channel images (N, 1, {S}, {S}) for {data!r}, got shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) != (S, S):
        raise ValueError(f"{what}: expected {S}x{S} images for {data!r}, got {x.shape[2]}x{x.shape[3]}")
    return x.float().div(127.5).sub(1.0)


def check_images(x, what: str = "samples") -> torch.Tensor:
    """uint8 images for the Inception (a tensor or NumPy array: N, C, H, W or N, H, W, C with C 1
    or 3, or N, H, W) -> (N, C, H, W) uint8; anything else is a clear error."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise ValueError(f"{what}: expected uint8 images with values 0..255, got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__} (for samples in [-1, 1] use "
                         f"fastddpm.to_uint8 first)")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what}: the Inception takes grey or RGB images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    return x


def _check_features(name) -> str:
    if name not in FEATURES:
        raise ValueError(f"features: expected one of {FEATURES} (the data set's shipped network, or the FID Inception), "
                         f"got {name!r}")
    return name


class FeatureStream:
    """Features of image batches, accumulated: streaming float64 moments (for the Fréchet
    distance) and the feature vectors themselves (small: for KID and precision/recall).
    features="inception": the FID Inception's pool3 (2048) instead of the data set's network."""

    def __init__(self, data: str, net=None, features_kind: str = "shipped"):
        self.data = data
        self.kind = _check_features(features_kind)
        if self.kind == "inception":
            from . import inception

            self.net = net if net is not None else inception.load()
            self.moments = Moments(inception.DIM)
        else:
            self.net = net if net is not None else features.load(data)
            self.moments = Moments(features.CONFIGS[data].features)
        self.feats = []
        self.radii = {}  # k -> the k-NN radii of these features (a reference set's, cached)

    @torch.no_grad()
    def add(self, images: torch.Tensor, batch: int = 1000) -> "FeatureStream":
        for i in range(0, len(images), batch):
            f = self.net.features(images[i : i + batch])
            self.moments.add(f)
            self.feats.append(f.double())
        return self

    def add_uint8(self, x: torch.Tensor, what: str = "samples") -> "FeatureStream":
        if self.kind == "inception":
            from . import inception

            f = inception.features(self.net, check_images(x, what))
            self.moments.add(f)
            self.feats.append(f)
            return self
        return self.add(check_batch(x, self.data, what))

    def all(self) -> torch.Tensor:
        return torch.cat(self.feats) if self.feats else torch.zeros(0, self.moments.sum.numel(), dtype=torch.float64)


def reference_features(data: str, split: str = "test", cache=CACHE, features_kind: str = "shipped") -> FeatureStream:
    """The real split's features, computed once and cached (keyed by the feature network's hash;
    the Inception's: its file and the conventions)."""
    from safetensors.torch import load_file, save_file

    from ..io import data as datasets
    from ..io.images import to_uint8

    if _check_features(features_kind) == "inception":
        from . import inception

        net = inception.load()
        path = Path(cache) / f"{data}-{split}-inception-{inception.network_hash(net)}.safetensors"
    else:
        net = features.load(data)
        path = Path(cache) / f"{data}-{split}-{features.network_hash(data)}.safetensors"

    def fill(s):
        images, _ = datasets.labelled(data, split)
        if features_kind == "inception":  # the real images as uint8, as samples reach it (to_uint8)
            for i in range(0, len(images), 500):
                s.add_uint8(to_uint8(images[i : i + 500]), "reference")
        else:
            s.add(images)

    return _cached(path, lambda: FeatureStream(data, net, features_kind), fill)


def _cached(path: Path, new, fill) -> "FeatureStream":
    """A reference FeatureStream read from `path`, or made (new() filled by fill) and written there."""
    from safetensors.torch import load_file, save_file

    s = new()
    if path.exists():
        try:
            d = load_file(str(path))
            s.moments = Moments.from_state({k[3:]: v for k, v in d.items() if k.startswith("mo.")})
            s.feats = [d["features"]]
            s.radii = {int(k[6:]): v for k, v in d.items() if k.startswith("radii.")}
            return s
        except Exception as e:  # a damaged cache (truncated, garbled, another format): derived data, made again
            sys.stderr.write(f"metrics: the cache {path} is damaged ({type(e).__name__}); computing it again\n")
            path.unlink(missing_ok=True)
            s = new()
    fill(s)
    s.radii = {K_NEIGHBOURS: stats._kth_neighbour_radius(s.all(), K_NEIGHBOURS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    save_file({"features": s.all(), **{f"mo.{k}": v for k, v in s.moments.state().items()},
               **{f"radii.{k}": v for k, v in s.radii.items()}}, str(tmp))
    os.replace(tmp, path)
    return s


def shipped_network_for(size: int, channels: int, what: str = "reference") -> str:
    """The shipped feature network that takes channels x size x size images, or a clear error."""
    for name, cfg in features.CONFIGS.items():
        if cfg.image_size == size and channels == 1:
            return name
    sizes = ", ".join(f"{n}: grey {c.image_size}x{c.image_size}" for n, c in features.CONFIGS.items())
    raise ValueError(f"{what}: the shipped feature networks take only their own data's images ({sizes}); these are "
                     f"{'grey' if channels == 1 else 'RGB'} {size}x{size}: use features='inception' (--features inception), "
                     f"which takes any size, grey or RGB")


def source_features(src, features_kind: str = "inception", cache=CACHE) -> "FeatureStream":
    """A data source's features (fastddpm.io.sources: a folder, an .npz, CIFAR batches), computed
    once and cached by the source's content hash and the network's."""
    if _check_features(features_kind) == "inception":
        from . import inception

        net = inception.load()
        path = Path(cache) / f"source-{src.fingerprint[:32]}-inception-{inception.network_hash(net)}.safetensors"
        new = lambda: FeatureStream("source", net, "inception")  # noqa: E731
    else:
        data = shipped_network_for(src.size, src.channels, f"reference: {src.name}")
        path = Path(cache) / f"source-{src.fingerprint[:32]}-{features.network_hash(data)}.safetensors"
        new = lambda: FeatureStream(data)  # noqa: E731

    def fill(s):
        for batch in src.batches(500):
            s.add_uint8(batch, "reference")

    return _cached(path, new, fill)


def is_stats_file(path) -> bool:
    """Whether `path` is published statistics (an .npz with mu and sigma) rather than images."""
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files
    except Exception:
        return False


K_NEIGHBOURS = 5
WHAT = ("fd", "kid", "prdc")


def check_options(kid_subsets: int = 100, kid_size: int = 1000, k: int = K_NEIGHBOURS, what=WHAT) -> None:
    """compare()'s options, checked before any image is read."""
    for name, v in (("kid_subsets", kid_subsets), ("kid_size", kid_size), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if isinstance(what, str) or any(w not in WHAT for w in what):
        raise ValueError(f"what: expected a subset of {WHAT}, got {what!r}")


def compare(samples: FeatureStream, ref: FeatureStream, kid_subsets: int = 100, kid_size: int = 1000, k: int = K_NEIGHBOURS,
            what=WHAT) -> dict:
    """FD, KID and precision/recall/density/coverage (those in `what`) of sample features
    against reference ones."""
    check_options(kid_subsets, kid_size, k, what)
    dim = samples.moments.sum.numel()
    stats.check_count(samples.moments.n, dim)
    out = dict(samples=samples.moments.n, reference=ref.moments.n)
    if "fd" in what:
        out["fd"] = frechet_moments(samples.moments, ref.moments)
    fx, fy = samples.all(), ref.all()
    if "kid" in what:
        out["kid"], out["kid_std"] = kid(fx, fy, kid_subsets, kid_size)
    if "prdc" in what:
        p = prdc(fy, fx, k, real_radii=ref.radii.get(k))
        out.update(precision=p.precision, recall=p.recall, density=p.density, coverage=p.coverage)
    return out


def check_inception_reference(data, split: str, src) -> None:
    """FID in the Inception's 2,048 features needs more than 2,048 reference images: fewer give a
    singular covariance and a number that means nothing. Said before any sample is read (the
    digits' 360 held-out images once cost a 50,000-image run its Inception features first)."""
    from ..io import data as datasets

    n, what = (len(src), f"reference {src.name}") if src is not None else (
        datasets.labelled(data, split)[0].shape[0], f"{data}'s {split!r} split")
    if n <= inception.DIM:
        raise ValueError(f"features: Inception FID needs more than {inception.DIM} reference images (the Inception's "
                         f"feature dimension); {what} has {n}. Compare with a larger set (reference= a folder or a "
                         f"statistics .npz), or use the shipped feature network (features='shipped')")


def evaluate(images, data: str = None, split: str = "test", cache=CACHE, labels=None, features: str = "shipped",
             reference=None, **options) -> dict:
    """Quality of uint8 `images` (a tensor, or an iterable of tensors: streamed) against the
    real `split` of `data`, in the shipped feature network's features, or (features="inception")
    the FID Inception's: then FID and KID (and precision/recall). reference: a statistics file
    (mu, sigma: pytorch-fid's and TTUR's .npz) instead of `data`: the Fréchet distance alone,
    Inception only. labels: the classes a class-conditional model was asked for, one an image in
    order: adds class accuracy (the feature network's classifier recovering them) and the mean
    per-class Fréchet distance (the shipped networks only: the Inception knows none of these classes)."""
    kind = _check_features(features)
    check_options(**options)
    stats_ref = src = None
    if reference is not None and data is not None:
        raise ValueError(f"reference: given with data={data!r}; compare with one or the other")
    if reference is not None and (isinstance(reference, Source) or not is_stats_file(reference)):
        src = reference if isinstance(reference, Source) else open_reference(reference, split=split)
        if kind == "shipped":
            data = shipped_network_for(src.size, src.channels, f"reference: {src.name}")  # before any image is read
        labels = None
    elif reference is not None:
        from . import inception

        if kind != "inception":
            raise ValueError("reference: a statistics file (mu, sigma) is the FID Inception's: pass features='inception'")
        stats_ref = inception.read_stats(reference)  # read and checked before any image
    elif data not in _features.CONFIGS:
        raise ValueError(f"data: expected one of {sorted(_features.CONFIGS)} (or reference= a statistics file), "
                         f"got {data!r}")
    s = FeatureStream(data, None, kind) if kind == "inception" else FeatureStream(data)
    if kind == "inception" and stats_ref is None:  # the reference's count, before the samples' minutes of features
        check_inception_reference(data, split, src)
    for batch in ([images] if isinstance(images, (torch.Tensor, np.ndarray)) else images):  # an array is one batch
        s.add_uint8(batch)
    if s.moments.n == 0:
        raise ValueError("samples: no images to evaluate")
    if kind == "inception":
        from . import inception

        if stats_ref is not None:
            stats.check_count(s.moments.n, inception.DIM)
            mu, cov = s.moments.mean_cov()
            out = dict(samples=s.moments.n, reference=str(reference), fd=frechet(mu, cov, *stats_ref))
        elif src is not None:
            out = compare(s, source_features(src, "inception", cache), **options)
            out.update(reference_source=src.name, reference_fingerprint=src.fingerprint)
        else:
            out = compare(s, reference_features(data, split, cache, "inception"), **options)
        out.update(data=data, split=split if stats_ref is None and src is None else None, features="inception",
                   feature_network=inception.network_hash(s.net), conventions=inception.CONVENTIONS)
        return out
    if src is not None:  # the user's images, in the shipped network their size fits
        out = compare(s, source_features(src, "shipped", cache), **options)
        out.update(reference_source=src.name, reference_fingerprint=src.fingerprint, data=data, split=None,
                   features="shipped", feature_network=_features.network_hash(data))
        return out
    labels = _checked_labels(labels, s.moments.n, _features.CONFIGS[data].classes)
    ref = reference_features(data, split, cache)
    out = compare(s, ref, **options)
    if labels is not None:
        out.update(per_class(s, ref, labels, data, split))
    out.update(data=data, split=split, features="shipped", feature_network=_features.network_hash(data),
               feature_network_accuracy=_features.card(data).get("test_accuracy"))
    return out


def open_reference(path, image_size=None, split="test"):
    """A reference of real images (a fastddpm.io.sources source: CIFAR batches take `split`, others
    are read whole), or a clear error naming both things a reference may be."""
    try:
        return open_source(str(path), image_size=image_size, split=split if _is_cifar(path) else "train")
    except ValueError as e:
        if Path(path).suffix.lower() == ".npz":
            raise ValueError(f"reference: {path} holds neither statistics (expected 'mu' and 'sigma') nor usable images: "
                             f"{e}") from None
        raise


def _is_cifar(path) -> bool:
    from ..io.sources import cifar_dir

    return Path(path).is_dir() and cifar_dir(path) is not None


def _checked_labels(labels, n: int, classes: int):
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"labels: expected {n} integer labels (one an image), got {labels.dtype} of shape {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels: expected classes in [0, {classes}), got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


@torch.no_grad()
def per_class(samples: FeatureStream, ref: FeatureStream, labels: torch.Tensor, data: str, split: str) -> dict:
    """Class accuracy (the feature network's classifier head on the samples' features against
    the asked-for labels) and the Fréchet distance per class against the real images of that
    class, and their mean (a class with no more samples than feature dimensions: None)."""
    from ..io import data as datasets

    fx = samples.all()
    predicted = samples.net.head(fx.float()).argmax(dim=1)
    out = {"class_accuracy": float((predicted == labels).float().mean())}
    real_labels = datasets.labelled(data, split)[1]
    fy = ref.all()
    dim, fd = fx.shape[1], {}
    for c in range(features.CONFIGS[data].classes):
        a, b = fx[labels == c], fy[real_labels == c]
        fd[c] = frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)) if len(a) > dim and len(b) > dim else None
    have = [v for v in fd.values() if v is not None]
    out.update(fd_per_class=fd, fd_per_class_mean=sum(have) / len(have) if len(have) == len(fd) else None)
    return out


def print_report(r: dict, out=None) -> None:
    """A report of `evaluate` as a short table (stdout by default)."""
    out = out or sys.stdout
    if r.get("features") == "inception":
        against = (f"{r['reference']} images of {r['reference_source']}" if r.get("reference_source") else
                   f"{r['reference']} real {r['data']} images ({r['split']} split)" if r.get("split") else
                   f"the statistics in {r['reference']}")
        out.write(f"{r['samples']} samples against {against}, in the FID Inception ({r['feature_network']}; "
                  f"{r['conventions']})\n  FID               {r['fd']:.4f}\n")
        if "kid" in r:
            out.write(f"  KID               {r['kid']:.5f} ± {r['kid_std']:.5f}\n  precision         {r['precision']:.3f}\n"
                      f"  recall            {r['recall']:.3f}\n  density           {r['density']:.3f}\n"
                      f"  coverage          {r['coverage']:.3f}\n")
        return
    if r.get("reference_source"):
        out.write(f"{r['samples']} samples against {r['reference']} images of {r['reference_source']}, in the features of "
                  f"{r['data']}'s network {r['feature_network']}\n")
    else:
        out.write(f"{r['samples']} samples against {r['reference']} real {r['data']} images ({r['split']} split), "
                  f"in the features of network {r['feature_network']} (test accuracy {r['feature_network_accuracy']})\n")
    out.write(f"  Fréchet distance  {r['fd']:.4f}\n  KID               {r['kid']:.5f} ± {r['kid_std']:.5f}\n"
              f"  precision         {r['precision']:.3f}\n  recall            {r['recall']:.3f}\n"
              f"  density           {r['density']:.3f}\n  coverage          {r['coverage']:.3f}\n")
    if "class_accuracy" in r:
        mean = r["fd_per_class_mean"]
        out.write(f"  class accuracy    {r['class_accuracy']:.3f}   (the feature network on real test images: "
                  f"{r['feature_network_accuracy']})\n  per-class FD mean {f'{mean:.4f}' if mean is not None else '- (too few samples a class)'}\n")
    out.write("  (not Inception FID: comparable only with figures in the same feature network)\n")
