"""Data sources: the user's images, read the way the projects people train with read them.

    open_source("digits")                         # the built-in sets, as before
    open_source("photos/", image_size=64)         # a folder, recursively; labels from first-level subfolders
    open_source("faces.npz")                      # uint8 images, NHWC or NCHW (said by shape), optional labels
    open_source("cifar-10-batches-py/")           # CIFAR-10 / CIFAR-100 python batches, with their labels

Every source is a list of images addressed by index: `read(idx)` gives uint8 (B, C, S, S),
`labels` the class of each (or None), `fingerprint` a content hash (the files' bytes and the
conventions below), which a resumed run and a cached reference statistic are keyed by.

Conventions (decided here, and the same for every source):

- **Size**: `image_size=S` fits an image as OpenAI's guided-diffusion does (`center_crop_arr`,
  also what improved-diffusion and ADM trained on): halve with a BOX filter while the short side
  is at least 2S, resize the short side to S with PIL's BICUBIC (antialiased), then take the
  central S x S crop. An image already S x S is left exactly as it is. An image whose short side
  is smaller than S is an error (upsampling would train on blur): the count and the first paths
  are named. Without image_size every image must be square and of one size.
- **Channels**: grey modes ('1', 'L', 'LA', 'I', 'I;16', 'F') are one channel, everything else
  (RGB, RGBA, P, CMYK, ...) three, through PIL's `convert` (alpha dropped). A folder of both is
  an error unless `channels=` says which to convert to (1: ITU-R 601 luma, PIL's; 3: grey
  replicated).
- **Files**: a folder's images are every file PIL registers an extension for, found
  recursively, in sorted path order; other files are skipped and counted. Every image is
  decoded once when the source opens (in worker processes), so an unreadable or truncated
  file stops it there, named with its path and PIL's message, before any training: never a
  failure hours into a run, never a silently smaller data set.
- **Labels**: a folder's first-level subfolder names, sorted, are the classes (torchvision's
  ImageFolder convention); an array's `labels` (or `y`, `targets`) array; CIFAR's own.
- **Memory**: a source whose uint8 images fit in `memory_limit` bytes (512 MiB by default, or
  the environment's FASTDDPM_DATA_MEMORY: CIFAR-10 is 150 MiB) is held decoded in memory; a larger folder is decoded again on every
  read, by the loader's worker processes (fastddpm.training.loader).
"""

import hashlib
import io
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

CONVENTION = "fastddpm-sources-1: guided-diffusion center_crop_arr (BOX halving, BICUBIC, centre crop); PIL convert"
MEMORY_LIMIT = 512 * 2**20  # FASTDDPM_DATA_MEMORY (bytes) overrides it
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
LABEL_KEYS = ("labels", "label", "y", "targets")
IMAGE_KEYS = ("images", "image", "x", "arr_0", "data")
BUILTIN = ("digits", "fashion-mnist")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading image files needs Pillow: pip install 'fastddpm[data]'") from e
    return Image


def image_extensions() -> set:
    """Every file extension PIL can open (lower case, with the dot)."""
    Image = _pil()
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def fit(img, size: Optional[int]):
    """`img` (a PIL image) fitted to size x size by guided-diffusion's center_crop_arr, as uint8 (H, W[, C])."""
    Image = _pil()
    if size is None:
        return np.asarray(img)
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y : y + size, x : x + size]


def _channels_of(mode: str) -> int:
    return 1 if mode in GREY_MODES else 3


def _as_mode(img, channels: int):
    want = "L" if channels == 1 else "RGB"
    if img.mode == want:
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") and want == "L":  # 16-bit / float grey: scaled to 8 bits
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return _pil().fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    return img.convert(want)


def _to_chw(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode(data: bytes, size, channels):
    """(mode, (w, h), fitted uint8 (C, S, S) or None): decode fully (a truncated file raises here)."""
    Image = _pil()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        mode, wh = img.mode, img.size
        c = channels or _channels_of(mode)
        if size is not None and min(wh) < size:
            return mode, wh, None
        if size is None and (wh[0] != wh[1]):
            return mode, wh, None
        return mode, wh, np.ascontiguousarray(_to_chw(fit(_as_mode(img, c), size)))


def _scan_one(args):
    path, size, channels, keep = args
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return path, None, f"cannot be read ({e.strerror or e})", None, None, None
    digest = hashlib.sha256(data).hexdigest()
    try:
        mode, wh, arr = _decode(data, size, channels)
    except Exception as e:  # PIL raises many kinds for a bad file: all of them name the file here
        return path, digest, f"is not a readable image ({type(e).__name__}: {e})", None, None, None
    return path, digest, None, mode, wh, (arr if keep else None)


class Source:
    """Images addressed by index. Subclasses set n, channels, size, labels, classes, name."""

    name: str = "images"
    labels: Optional[torch.Tensor] = None
    classes: Optional[list] = None

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.n * self.channels * self.size * self.size

    def read(self, idx) -> torch.Tensor:
        """uint8 (B, C, S, S) of the images at `idx` (a sequence or tensor of indices)."""
        raise NotImplementedError

    def in_memory(self) -> bool:
        return True

    def images(self) -> torch.Tensor:
        """All the images as float32 (N, C, S, S) in [-1, 1] (only for a source held in memory)."""
        if not self.in_memory():
            raise ValueError(f"{self.name}: {self.n} images of {self.channels}x{self.size}x{self.size} "
                             f"({self.nbytes / 2**30:.1f} GiB) are streamed, not held in memory")
        return self.read(torch.arange(self.n)).float().div_(127.5).sub_(1.0)

    def batches(self, batch: int = 500):
        """uint8 batches of every image, in index order."""
        for i in range(0, self.n, batch):
            yield self.read(torch.arange(i, min(i + batch, self.n)))

    def describe(self, labels: bool = True) -> str:
        """'NAME (N images CxSxS[, K classes])': the classes only when `labels` (a conditional run uses them)."""
        c = "" if not labels else f", {len(self.classes)} classes" if self.classes else (
            ", labelled" if self.labels is not None else "")
        return f"{self.name} ({self.n} images {self.channels}x{self.size}x{self.size}{c})"


class ArraySource(Source):
    """uint8 images in memory, (N, C, S, S)."""

    def __init__(self, images: torch.Tensor, labels=None, name="array", fingerprint=None, classes=None):
        self.data = images
        self.n, self.channels, self.size = images.shape[0], images.shape[1], images.shape[2]
        self.labels, self.name, self.classes = labels, name, classes
        self.fingerprint = fingerprint or _hash_tensor(images, labels)

    def read(self, idx) -> torch.Tensor:
        return self.data[torch.as_tensor(idx, dtype=torch.long)]


class FolderSource(Source):
    """A folder of image files (see the module's conventions)."""

    def __init__(self, root, image_size=None, channels=None, labelled=False, memory_limit=None, workers=None):
        memory_limit = _memory_limit(memory_limit)
        self.root = Path(root)
        self.name = str(root)
        exts = image_extensions()
        found = sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
        self.paths = [p for p in found if p.suffix.lower() in exts]
        self.skipped = len(found) - len(self.paths)
        if not self.paths:
            raise ValueError(f"data: {root} holds no images (no file with an extension PIL reads"
                             f"{f'; {self.skipped} other files' if self.skipped else ''})")
        self.n = len(self.paths)
        rel = [p.relative_to(self.root) for p in self.paths]
        if labelled:
            top = [r.parts[0] if len(r.parts) > 1 else None for r in rel]
            loose = [str(r) for r, t in zip(rel, top) if t is None]
            if loose:
                raise ValueError(f"data: class labels come from {root}'s first-level subfolders (one per class), but "
                                 f"{len(loose)} images lie in {root} itself (e.g. {loose[0]}): move them into a class "
                                 f"folder, or train without labels")
            self.classes = sorted(set(top))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[t] for t in top], dtype=torch.long)
        # one pass over every file: its hash, a full decode (a truncated file fails here), its mode and size
        keep_guess = image_size is not None and self.n * 3 * image_size**2 <= memory_limit
        jobs = [(str(p), image_size, channels, keep_guess) for p in self.paths]
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        if workers > 1 and self.n >= 256:
            with ProcessPoolExecutor(workers) as pool:
                results = list(pool.map(_scan_one, jobs, chunksize=64))
        else:
            results = [_scan_one(j) for j in jobs]
        bad = [(p, why) for p, _, why, *_ in results if why]
        if bad:
            listed = "; ".join(f"{p} {why}" for p, why in bad[:5])
            raise ValueError(f"data: {len(bad)} of {self.n} files in {root} could not be decoded: {listed}"
                             f"{' ...' if len(bad) > 5 else ''} (fix or remove them: a data set is never silently smaller)")
        modes = [r[3] for r in results]
        sizes = [r[4] for r in results]
        kinds = sorted({_channels_of(m) for m in modes})
        if channels is None and len(kinds) > 1:
            grey = sum(_channels_of(m) == 1 for m in modes)
            first_grey = next(p for p, m in zip(self.paths, modes) if _channels_of(m) == 1)
            first_rgb = next(p for p, m in zip(self.paths, modes) if _channels_of(m) == 3)
            raise ValueError(f"data: {root} mixes grey ({grey}, e.g. {first_grey}) and colour images ({self.n - grey}, e.g. "
                             f"{first_rgb}): pass --channels 1 or 3 (channels=) to convert them all")
        self.channels = channels or kinds[0]
        if image_size is None:
            shapes = sorted({tuple(s) for s in sizes})
            if len(shapes) > 1 or shapes[0][0] != shapes[0][1]:
                listed = ", ".join(f"{w}x{h}" for w, h in shapes[:4])
                raise ValueError(f"data: {root}'s images are not all square and of one size ({listed}"
                                 f"{' ...' if len(shapes) > 4 else ''}): pass --image-size (image_size=) to fit them")
            image_size = shapes[0][0]
        small = [p for p, (w, h) in zip(self.paths, sizes) if min(w, h) < image_size]
        if small:
            raise ValueError(f"data: {len(small)} images in {root} are smaller than --image-size {image_size} (e.g. {small[0]}, "
                             f"{sizes[self.paths.index(small[0])][0]}x{sizes[self.paths.index(small[0])][1]}): choose a "
                             f"smaller size or remove them (upsampling would train on blur)")
        self.size = image_size
        h = hashlib.sha256(f"{CONVENTION}|{self.size}|{self.channels}|{labelled}\n".encode())
        for r, (_, digest, *_rest) in zip(rel, results):
            h.update(f"{r.as_posix()}\t{digest}\n".encode())
        self.fingerprint = h.hexdigest()
        self._memory = None
        if self.nbytes <= memory_limit:
            arrays = [r[5] for r in results]
            if not keep_guess or any(a is None or a.shape[0] != self.channels for a in arrays):
                arrays = [self._load(i) for i in range(self.n)]
            self._memory = torch.from_numpy(np.stack(arrays))

    def _load(self, i: int) -> np.ndarray:
        Image = _pil()
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img.load()
                return np.ascontiguousarray(_to_chw(fit(_as_mode(img, self.channels), self.size)))
        except Exception as e:
            raise ValueError(f"data: {path} could not be decoded ({type(e).__name__}: {e}); it was readable when the "
                             f"source opened: was it changed since?") from e

    def in_memory(self) -> bool:
        return self._memory is not None

    def read(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self._memory is not None:
            return self._memory[idx]
        return torch.from_numpy(np.stack([self._load(int(i)) for i in idx]))


# ---------------------------------------------------------------------- arrays and CIFAR
def _hash_tensor(images: torch.Tensor, labels=None) -> str:
    h = hashlib.sha256(f"{CONVENTION}|{tuple(images.shape)}\n".encode())
    h.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def _layout(arr: np.ndarray, what: str) -> np.ndarray:
    """(N, C, H, W) from NHWC or NCHW (or (N, H, W) grey), said by which axis has 1 or 3 channels."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{what}: expected images (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
    last, first = arr.shape[3] in (1, 3), arr.shape[1] in (1, 3)
    if last and not first:
        return arr.transpose(0, 3, 1, 2)
    if first and not last:
        return arr
    if first and last:
        raise ValueError(f"{what}: shape {arr.shape} reads as NHWC and as NCHW; store images larger than 3 pixels")
    raise ValueError(f"{what}: expected 1 or 3 channels first (NCHW) or last (NHWC), got shape {arr.shape}")


def _fit_array(x: np.ndarray, image_size, channels, what: str) -> np.ndarray:
    """(N, C, H, W) uint8 fitted by the same conventions as a folder's images."""
    n, c, hh, ww = x.shape
    if channels is not None and channels != c:
        Image = _pil()
        x = np.stack([_to_chw(np.asarray(_as_mode(Image.fromarray(a[0] if c == 1 else a.transpose(1, 2, 0)), channels)))
                      for a in x]) if n else x
        c = channels
    if image_size is None:
        if hh != ww:
            raise ValueError(f"{what}: images are {ww}x{hh}, not square: pass --image-size (image_size=) to fit them")
        return x
    if min(hh, ww) < image_size:
        raise ValueError(f"{what}: images are {ww}x{hh}, smaller than --image-size {image_size} (upsampling would train on blur)")
    if hh == ww == image_size:
        return x
    Image = _pil()
    return np.stack([_to_chw(fit(Image.fromarray(a[0] if c == 1 else a.transpose(1, 2, 0)), image_size)) for a in x])


def _check_labels(labels, n: int, what: str):
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{what}: {labels.shape[0] if labels.ndim else 'a scalar of'} labels for {n} images "
                         f"(labels shape {labels.shape}); expected one integer label per image")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}")
    if n and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def array_source(path, image_size=None, channels=None) -> ArraySource:
    """An .npz (its `images` array, or its only one; `labels`/`y`/`targets` if present) or .npy of uint8 images."""
    path = Path(path)
    what = f"data: {path}"
    try:
        loaded = np.load(path, allow_pickle=False)  # a user's file is data: no object arrays, no pickles
    except ValueError as e:
        raise ValueError(f"{what}: not a plain numpy array file ({e})") from e
    if isinstance(loaded, np.ndarray):
        images, labels = loaded, None
    else:
        with loaded:
            keys = list(loaded.files)
            ik = next((k for k in IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if ik is None:
                raise ValueError(f"{what}: holds no images array (arrays {keys}; expected one named "
                                 f"{' or '.join(IMAGE_KEYS[:2])}, or a single array)")
            lk = next((k for k in LABEL_KEYS if k in keys and k != ik), None)
            images, labels = loaded[ik], (loaded[lk] if lk else None)
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8 (0..255), got {images.dtype}")
    x = _layout(images, what)
    if x.shape[0] == 0:
        raise ValueError(f"{what}: holds no images (shape {images.shape})")
    labels = _check_labels(labels, x.shape[0], what)
    x = np.ascontiguousarray(_fit_array(x, image_size, channels, what))
    t = torch.from_numpy(x)
    return ArraySource(t, labels, name=str(path), fingerprint=_hash_tensor(t, labels))


class _Restricted(pickle.Unpickler):
    """CIFAR's python batches are pickles of dicts of bytes, lists and numpy arrays: nothing else is built."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to build {module}.{name}: a CIFAR batch holds only arrays, lists and bytes")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _Restricted(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"data: {path} is not a CIFAR python batch ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"data: {path} is not a CIFAR python batch (a {type(d).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def cifar_dir(path) -> Optional[str]:
    """'cifar-10' or 'cifar-100' when `path` is (or holds) python batches, else None."""
    p = Path(path)
    for q in (p, p / "cifar-10-batches-py", p / "cifar-100-python"):
        if (q / "data_batch_1").is_file():
            return "cifar-10"
        if (q / "train").is_file() and (q / "meta").is_file():
            return "cifar-100"
    return None


def cifar_source(path, split="train", image_size=None, channels=None) -> ArraySource:
    """CIFAR-10 (data_batch_1..5 / test_batch) or CIFAR-100 (train / test, fine labels) python batches."""
    p = Path(path)
    kind = cifar_dir(p)
    root = next(q for q in (p, p / "cifar-10-batches-py", p / "cifar-100-python")
                if (q / "data_batch_1").is_file() or (q / "train").is_file())
    if kind == "cifar-10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = "labels"
    else:
        names, key = (["train"] if split == "train" else ["test"]), "fine_labels"
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ValueError(f"data: {root} is a {kind} folder without {', '.join(missing)}")
    images, labels = [], []
    for n in names:
        d = _read_batch(root / n)
        if "data" not in d or key not in d:
            raise ValueError(f"data: {root / n} lacks {'data' if 'data' not in d else key!r} (a {kind} batch has both)")
        x = np.asarray(d["data"])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise ValueError(f"data: {root / n}: expected uint8 data (N, 3072), got {x.dtype} {x.shape}")
        images.append(x.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d[key]))
    x, y = np.concatenate(images), np.concatenate(labels)
    what = f"data: {root}"
    y = _check_labels(y, x.shape[0], what)
    classes = None
    meta = root / ("batches.meta" if kind == "cifar-10" else "meta")
    if meta.is_file():
        m = _read_batch(meta)
        names = m.get("label_names") or m.get("fine_label_names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None
    x = np.ascontiguousarray(_fit_array(x, image_size, channels, what))
    t = torch.from_numpy(x)
    return ArraySource(t, y, name=f"{root} ({kind} {split})", fingerprint=_hash_tensor(t, y), classes=classes)


def builtin_source(name: str, split: str = "train") -> ArraySource:
    """digits / fashion-mnist as uint8 (digits' 0..16 pixels scaled to 0..255, rounded)."""
    from . import data

    if split == "train":
        x, y = data.load_labelled(name)
    else:
        x, y = data.labelled(name, "test")
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return ArraySource(u8, y, name=name if split == "train" else f"{name} ({split})", fingerprint=_hash_tensor(u8, y))


def _memory_limit(v):
    if v is not None:
        return v
    env = os.environ.get("FASTDDPM_DATA_MEMORY")
    if env is None:
        return MEMORY_LIMIT
    try:
        return int(env)
    except ValueError:
        raise ValueError(f"FASTDDPM_DATA_MEMORY: expected a number of bytes, got {env!r}") from None


def open_source(spec, image_size=None, channels=None, labelled=False, split="train", memory_limit=None,
                workers=None) -> Source:
    """A data source from a name or a path: 'digits', 'fashion-mnist', a folder of images, a
    CIFAR python-batches folder, an .npz / .npy of uint8 images."""
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), got {channels!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if isinstance(spec, str) and spec in BUILTIN:
        if image_size is not None or channels is not None:
            raise ValueError(f"data: {spec} is a built-in set of fixed size; --image-size and --channels are for your own images")
        return builtin_source(spec, split)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"data: {spec} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing path")
    if path.is_dir():
        if cifar_dir(path):
            return cifar_source(path, split, image_size, channels)
        if split != "train":
            raise ValueError(f"data: {spec} is a folder of images: it has no {split!r} split (pass that split's own folder)")
        return FolderSource(path, image_size, channels, labelled, memory_limit, workers)
    if path.suffix.lower() in (".npz", ".npy"):
        src = array_source(path, image_size, channels)
        if labelled and src.labels is None:
            raise ValueError(f"data: {spec} holds no labels array ({', '.join(LABEL_KEYS)}): a class-conditional model needs them")
        return src
    raise ValueError(f"data: {spec} is a file but not an .npz or .npy array; expected a built-in name, a folder of images, "
                     f"a CIFAR batches folder or an .npz/.npy")


def check_matches(src: Source, in_channels: int, sample_size, what="data") -> None:
    """The source's images fit the model: its channels and size, before any work."""
    if in_channels is not None and src.channels != in_channels:
        raise ValueError(f"{what}: {src.name} has {src.channels}-channel images, the model expects in_channels={in_channels}"
                         f" (--channels converts)")
    if sample_size is not None and src.size != sample_size:
        raise ValueError(f"{what}: {src.name}'s images are {src.size}x{src.size}, the model expects sample_size={sample_size}"
                         f" (--image-size fits them)")


