"""Checkpoints that survive a crash, a corrupted disk and a second trainer.

One safetensors file per checkpoint, written to a temporary file in the same folder, fsynced,
renamed into place, the folder fsynced; a write that dies half-way leaves only a temporary
file, never read and removed by the next run. Every checkpoint records its run (an id and
the hash of the settings that decide the run's trajectory) and a sha256 of its tensors:
a damaged file is detected on resume, named, and passed over for the newest one that
verifies. Clean-up only ever deletes the same run's older checkpoints. A folder is used by
one trainer at a time (an exclusive lock, held while it writes).

Layout: tensors `model.*`, `ema.*`, `optim.<param index>.<state key>`, `rng.*`; metadata
(strings) `fastddpm` = JSON of run, step, config, optimizer hyper-parameters, and `sha256`.
"""

import fcntl
import hashlib
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

PATTERN = re.compile(r"^step-(\d{9})\.safetensors$")
TEMP = re.compile(r"^\.step-\d{9}\.safetensors\.tmp-\d+$")


def path_for(folder, step: int) -> Path:
    return Path(folder) / f"step-{step:09d}.safetensors"


def list_checkpoints(folder) -> list:
    """Finished checkpoints in `folder`, oldest first (temporary files never count)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name))


def digest(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fsync_dir(folder) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(folder) -> Path:
    """mkdir -p, fsyncing each new folder into its parent so the folder itself is durable."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        p.mkdir(exist_ok=True)  # another process (a torchrun rank) may make it at the same moment
        fsync_dir(p.parent)
    return folder


def check_can_create(folder, what: str = "out") -> Path:
    """What check_writable checks, creating nothing: `folder` is a folder or can become one in
    a writable existing ancestor. Run before other checks, so that a typo creates no folder."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"{what}: {folder} is a file, not a folder")
        anchor = folder
    else:
        anchor = folder.parent
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir():
            raise ValueError(f"{what}: {folder} cannot hold checkpoints ({anchor} is a file, not a folder)")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {folder} cannot hold checkpoints ({anchor} is not writable)")
    return folder


def check_writable(folder, what: str = "out") -> Path:
    """Create `folder` and write and remove a probe file in it: a folder that cannot hold
    checkpoints is a clear error before any work, not after the training."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{what}: {folder} is a file, not a folder")
        make_dir(folder)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"fastddpm")
        probe.unlink()
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"{what}: {folder} cannot hold checkpoints ({type(e).__name__}: {e})") from e
    return folder


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name (.NAME.tmp-PID), fsync, rename; a failed write (a full disk)
    leaves nothing behind. The caller fsyncs the folder when the rename must be durable."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(folder, step: int, tensors: dict, meta: dict, keep: int = 2) -> Path:
    """Write one checkpoint atomically; then delete this run's checkpoints beyond the newest `keep`."""
    folder = make_dir(folder)
    final = path_for(folder, step)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(final, save(cpu, metadata={"fastddpm": json.dumps(meta), "sha256": digest(cpu)}))
    fsync_dir(folder)  # the rename itself is durable
    mine = [p for p in list_checkpoints(folder) if run_of(p) == meta.get("run")]
    for old in mine[:-keep]:
        old.unlink(missing_ok=True)
    return final


def read_meta(path) -> dict:
    """The JSON metadata of a checkpoint, from its header only; a clear error if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["fastddpm"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a fastddpm checkpoint ({type(e).__name__}: {e})") from e


def run_of(path):
    """The run id a checkpoint belongs to (None when its header cannot be read)."""
    try:
        return read_meta(path).get("run")
    except ValueError:
        return None


def read(path, verify: bool = True) -> tuple:
    """(tensors, meta) of one checkpoint; a damaged or tampered file is a clear error."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header["fastddpm"])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a fastddpm checkpoint ({type(e).__name__}: {e})") from e
    if verify and "sha256" in header and digest(tensors) != header["sha256"]:
        raise ValueError(f"checkpoint {path} is damaged: its tensors do not match the checksum written with them")
    return tensors, meta


def newest_valid(folder, run=None):
    """(path, tensors, meta) of the newest checkpoint in `folder` (of `run`, if given) that
    reads and verifies, warning about every newer one that does not; None if there is none."""
    for path in reversed(list_checkpoints(folder)):
        try:
            tensors, meta = read(path)
        except ValueError as e:
            warnings.warn(f"{e}; falling back to an older checkpoint", stacklevel=2)
            continue
        if run is None or meta.get("run") == run:
            return path, tensors, meta
    return None


def latest(folder):
    found = list_checkpoints(folder)
    return found[-1] if found else None


class FolderInUse(RuntimeError):
    """The output folder is locked by another process (a user's situation, not a bug)."""


class FolderLock:
    """An exclusive lock on an output folder (flock on OUT/.lock): one trainer at a time. The
    kernel releases it when the holder exits, however it exits; the file says who holds it."""

    def __init__(self, folder, what: str = "out"):
        self.path = Path(folder) / ".lock"
        self.what = what
        self.fd = None
        self.depth = 0  # re-entrant: held until the outermost release

    def acquire(self) -> "FolderLock":
        if self.fd is not None:
            self.depth += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(self.path).read_text().strip() or "another process"
            os.close(fd)
            raise FolderInUse(f"{self.what}: {self.path.parent} is in use by another trainer ({holder}); "
                               f"wait for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd, self.depth = fd, 1
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.depth -= 1
        if self.depth == 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def remove_stale_temps(folder) -> list:
    """Delete the temporary files that killed writes left (call with the folder's lock held)."""
    folder = Path(folder)
    removed = [p for p in folder.iterdir() if TEMP.match(p.name)] if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
