"""Training an ε-prediction DDPM with the fused kernels: no noise tensor is ever stored.

Everything random is addressed by counters, so a run is a function of its config and
seed: sample k of the run (k = (step * world + rank) * batch + i) gets the data index
perm_epoch[k mod N], the noise seed seed * 2**40 + k and the timestep
t = (T * philox(seed, k, STREAM_TIMESTEP)) >> 32. Resuming from a checkpoint therefore continues exactly,
and a torchrun job with W ranks of batch B trains on the same samples as one process
with batch W * B.
"""

import copy
import hashlib
import json
import math
import uuid
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..io import checkpoint as ckpt
from ..io import stop
from ..core import fused
from ..core import reference
from .. import kernels as K
from ..io.data import as_images_and_labels, check_images
from ..io.sources import Source, check_matches
from .loader import StepLoader
from ..io.images import save_grid
from ..sampling.sampler import Sampler, compile_errors_explained
from ..core.schedule import Schedule


@dataclass(frozen=True)
class TrainConfig:
    """A training run's settings. The first group decides the run's trajectory sample by
    sample: a resume refuses to change any of them (EXACT). The rest may change on resume."""

    batch_size: int = 128  # per rank
    lr: float = 2e-4  # Ho et al. CIFAR-10
    warmup: int = 500  # linear learning-rate warm-up, in steps
    grad_clip: float = 1.0  # 0: no clipping
    ema_decay: float = 0.9999  # reached gradually: min(decay, (1 + s) / (10 + s))
    weight_decay: float = 0.0
    seed: int = 0  # in [0, 2**23): sample k's noise seed is seed * 2**40 + k
    schedule: str = "linear"  # or "cosine", "scaled_linear"
    T: int = 1000
    prediction: str = "epsilon"  # what the model learns to predict: "epsilon", "v" or "sample" (x_0)
    min_snr_gamma: float = 0.0  # > 0: min-SNR-γ loss weights (Hang et al. 2023; 5 is usual); 0: unweighted
    zero_snr: bool = False  # rescale the schedule to zero terminal SNR (Lin et al. 2024; needs prediction="v" or "sample")
    cond_drop: float = 0.1  # a class-conditional model: the share of samples trained with the null label (Ho & Salimans)
    hflip: bool = False  # flip sample k left-right when bit 0 of philox(seed, k, STREAM_FLIP) is set (DDPM's CIFAR-10 augmentation)
    fused: bool = True  # False: the reference path (materialised ε, eager)
    compile: bool = False  # torch.compile the forward + loss
    steps: int = 10_000  # optimizer steps in the whole run (may grow on resume)
    log_every: int = 100
    checkpoint_every: int = 1000  # 0: only at the end
    sample_every: int = 0  # EMA sample grid every this many steps and at the end; 0: never
    sample_batch: int = 64
    keep: int = 2  # this run's newest checkpoints kept (>= 1)

    def __post_init__(self):
        def check(name, ok, expected):
            v = getattr(self, name)
            if isinstance(v, bool) or not ok(v):
                raise ValueError(f"{name}: expected {expected}, got {v!r}")

        def is_int(v):
            return isinstance(v, int)

        def is_num(v):
            return isinstance(v, (int, float)) and math.isfinite(v)

        check("steps", lambda v: is_int(v) and v >= 1, "a positive int (optimizer steps in the whole run)")
        check("batch_size", lambda v: is_int(v) and v >= 1, "a positive int (samples a step, per rank)")
        check("lr", lambda v: is_num(v) and v >= 0, "a finite learning rate >= 0")
        check("warmup", lambda v: is_int(v) and v >= 0, "an int >= 0 (warm-up steps)")
        check("grad_clip", lambda v: is_num(v) and v >= 0, "a finite norm >= 0 (0: no clipping)")
        check("ema_decay", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
        check("weight_decay", lambda v: is_num(v) and v >= 0, "a finite number >= 0")
        check("seed", lambda v: is_int(v) and 0 <= v < 2**23, "an int in [0, 2**23) (sample k's noise seed is seed * 2**40 + k)")
        check("T", lambda v: is_int(v) and v >= 1, "a positive int number of timesteps")
        check("schedule", lambda v: v in SCHEDULES, f"one of {SCHEDULES}")
        object.__setattr__(self, "prediction", K.prediction_name(self.prediction))
        check("min_snr_gamma", lambda v: is_num(v) and v >= 0, "a finite number >= 0 (0: no min-SNR weighting)")
        check("cond_drop", lambda v: is_num(v) and 0 <= v <= 1, "a probability in [0, 1] (0.1 is usual)")
        if self.zero_snr is True and self.prediction == "epsilon":
            raise ValueError("zero_snr: an ε-prediction model is undefined at the last step of a zero-terminal-SNR schedule "
                             "(ᾱ = 0): train with prediction='v' (Lin et al. 2024) or 'sample'")
        for flag in ("fused", "compile", "zero_snr"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag}: expected True or False, got {getattr(self, flag)!r}")
        check("log_every", lambda v: is_int(v) and v >= 1, "a positive int")
        check("checkpoint_every", lambda v: is_int(v) and v >= 0, "an int >= 0 (0: only at the end)")
        check("sample_every", lambda v: is_int(v) and v >= 0, "an int >= 0 (0: never)")
        check("sample_batch", lambda v: is_int(v) and v >= 1, "a positive int")
        check("keep", lambda v: is_int(v) and v >= 1, "a positive int (this run's newest checkpoints kept)")

    def schedule_obj(self) -> Schedule:
        s = getattr(Schedule, self.schedule)(T=self.T)
        return s.rescale_zero_snr() if self.zero_snr else s

    def loss_weights(self, schedule: Schedule, device) -> Optional[torch.Tensor]:
        """The min-SNR-γ weights for this prediction type, or None (unweighted)."""
        if not self.min_snr_gamma:
            return None
        return K.min_snr_weights(schedule.alphas_cumprod, self.min_snr_gamma, self.prediction, device)


SCHEDULES = ("linear", "cosine", "scaled_linear")
EXACT = ("batch_size", "lr", "warmup", "grad_clip", "ema_decay", "weight_decay", "seed", "schedule", "T", "fused", "compile")
EXACT_SINCE_V = {"prediction": "epsilon", "min_snr_gamma": 0.0, "zero_snr": False, "cond_drop": 0.1, "hflip": False}  # exact too; absent in older checkpoints
SAFE = ("steps", "log_every", "checkpoint_every", "sample_every", "sample_batch", "keep")


class Trainer:
    """Trains `model` (a fastddpm UNet, or any module with a .config dataclass) on `data`:
    images (N, C, H, W) in [-1, 1] as a tensor, a TensorDataset or a DataLoader, held on
    the device as one tensor. Checkpoints and sample grids go to out_dir, which is checked
    (created, probed for writing) before any work and holds one run: a fresh run into a
    folder with another run's checkpoints is refused. resume=True continues the run in
    out_dir from its newest checkpoint that verifies, refusing any change of a setting in
    EXACT; with no checkpoint there, it is an error (a mistyped folder must not restart a run)."""

    def __init__(self, model: nn.Module, data: torch.Tensor, config: TrainConfig = TrainConfig(), *,
                 out_dir=None, device=None, resume: bool = False, progress: bool = True, workers: Optional[int] = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        for name, v in (("resume", resume), ("progress", progress)):
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected True or False, got {v!r}")
        self.cfg = config
        self.device = K.check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and self.rank == 0
        self.schedule = config.schedule_obj()
        self.loss_weights = config.loss_weights(self.schedule, self.device)
        self.lock = None
        mcfg = getattr(model, "config", None)
        self.num_classes = getattr(mcfg, "num_classes", None)  # None: unconditional
        self.source = None  # a Source too large for memory: its images are read step by step (training/loader.py)
        fingerprint = None  # a Source's content hash: the run's data, held in memory or streamed alike
        if isinstance(data, Source):
            fingerprint = data.fingerprint
            check_matches(data, getattr(mcfg, "in_channels", None), getattr(mcfg, "sample_size", None))
            if self.num_classes and data.labels is None:
                raise ValueError(f"data: {data.name} has no labels, and the model is class-conditional "
                                 f"(num_classes={self.num_classes}): a folder's labels are its class subfolders")
            src_labels = data.labels if self.num_classes else None
            if data.in_memory():
                data = (data.images(), src_labels) if src_labels is not None else data.images()
            else:
                self.source, data = data, None
                labels = src_labels
        if self.source is None:
            data, labels = as_images_and_labels(data)
            check_images(data, getattr(mcfg, "in_channels", None), sample_size=getattr(mcfg, "sample_size", None))
        if labels is not None and not self.num_classes:
            raise ValueError("data: labels given, but the model is unconditional (its config has no num_classes): pass the "
                             "images alone to train it without them, or a class-conditional model "
                             "(UNetConfig(num_classes=...); the command line's --conditional) to train on them")
        self.n = data.shape[0] if self.source is None else self.source.n
        labels = _check_labels(labels, self.n, self.num_classes) if self.num_classes else None
        if resume and self.out_dir is not None and not ckpt.list_checkpoints(self._ckpt_dir()):
            raise ValueError(f"resume: {self.out_dir} holds no checkpoint to resume (nothing in {self._ckpt_dir()}); check "
                             f"the folder, or start a new run without resume")
        self.created = self.out_dir is not None and not self.out_dir.exists()  # ours to remove if the run keeps nothing
        if self.out_dir is not None and self.rank == 0:
            ckpt.check_writable(self.out_dir, "out_dir")  # before any work: not after the training
            self.lock = ckpt.FolderLock(self.out_dir, "out_dir")
            self.lock.acquire().release()  # another trainer on this folder: say so now

        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.fmt = fmt
        if fingerprint is None:
            self.data_hash = _fingerprint(data) if labels is None else f"{_fingerprint(data)}+{_fingerprint(labels.float())}"
        else:  # the source's content hash: its files' bytes and how they are fitted
            self.data_hash = f"source:{fingerprint}" + ("" if labels is None else f"+{_fingerprint(labels.float())}")
        if self.source is None:
            self.data = data.to(self.device, torch.float32).contiguous(memory_format=fmt)
        else:
            self.data = None
            self.loader = StepLoader(self.source, self._indices, workers=workers, pin=self.cuda)
        self.labels = labels.to(self.device) if labels is not None else None
        self.model = model.to(self.device, memory_format=fmt).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net = nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.params = [p for p in self.model.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay, fused=self.cuda)
        self.forward_loss = torch.compile(self._forward_loss) if config.compile else self._forward_loss
        self.step = 0
        self.run = uuid.uuid4().hex[:12]
        self.last_checkpoint = None
        self.history = []  # (step, loss), read back once per log interval
        self._pending = []  # device losses not yet read back
        self._perms = {}  # epoch -> data permutation (the current and the previous)
        self._vote = None  # DDP: how the ranks agree on the step to stop at (fit makes it)
        self._tick = (time.perf_counter(), 0)
        self.t_start = time.perf_counter()
        if self.out_dir is None:
            if resume:
                raise ValueError("resume: needs out_dir, the folder whose run to continue")
            return
        if resume:
            found = ckpt.newest_valid(self._ckpt_dir())
            if found is None:
                raise ValueError(f"resume: no checkpoint in {self._ckpt_dir()} that verifies; check the folder, "
                                 f"or start a new run without resume")
            self.load(*found)
            if self.progress:
                self._say(f"resuming from step {self.step} (checkpoint {found[0]})")
        else:
            other = [p for p in ckpt.list_checkpoints(self._ckpt_dir())]
            if other:
                raise ValueError(f"out_dir: {self.out_dir} already holds another run's checkpoints ({other[-1].name}, run "
                                 f"{ckpt.run_of(other[-1])}); resume it, or choose another folder")

    def identity(self) -> dict:
        """What makes two runs the same run: the EXACT settings, the model, the data, the world."""
        newer = {k: getattr(self.cfg, k) for k, default in EXACT_SINCE_V.items() if getattr(self.cfg, k) != default}
        return {**{k: getattr(self.cfg, k) for k in EXACT}, **newer, "model_config": _config_dict(self.model),
                "data": self.data_hash, "world": self.world}

    def close(self) -> None:
        """Release the output folder and the loader's workers (fit() does at its end; so does process exit)."""
        if self.source is not None:
            self.loader.close()
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ addressing
    def _counter(self, step: int) -> torch.Tensor:
        B = self.cfg.batch_size
        return (step * self.world + self.rank) * B + torch.arange(B)

    def _indices(self, step: int) -> torch.Tensor:
        """The data indices of this rank's batch at `step`: sample k takes perm_epoch[k mod N]."""
        k = self._counter(step)
        N = self.n
        epochs = k // N
        idx = torch.empty_like(k)
        for e in epochs.unique().tolist():  # a batch spans at most two epochs
            sel = epochs == e
            idx[sel] = self._perm(e)[k[sel] % N]
        return idx

    def _batch(self, step: int):
        """(x0, t, seeds) of this rank's batch at `step`: a pure function of (config, step, rank)."""
        k = self._counter(step)
        idx = idx_host = self._indices(step)
        words = K.philox(torch.tensor(self.cfg.seed), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k), torch.full_like(k, K.STREAM_TIMESTEP))
        t = (words[0] * self.schedule.T) >> 32  # uniform on [0, T)
        rows = [idx, t, k + (self.cfg.seed << 40)]  # data index, t, noise seed
        if self.labels is not None:  # which samples train unconditionally: addressed by (seed, sample k), as t
            drop = K.philox(torch.tensor(self.cfg.seed), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k),
                            torch.full_like(k, K.STREAM_LABEL_DROP))[0] < int(self.cfg.cond_drop * 2**32)
            rows.append(drop.long())
        if self.cfg.hflip:  # which samples are flipped: addressed by (seed, sample k), as t (k names the epoch and index)
            rows.append(K.philox(torch.tensor(self.cfg.seed), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k),
                                 torch.full_like(k, K.STREAM_FLIP))[0] & 1)
        host = torch.stack(rows)  # (3 to 5, B)
        if self.cuda:  # pinned + non_blocking: one copy that never waits for the GPU
            host = host.pin_memory()
        host = host.to(self.device, non_blocking=True)
        idx, t, seeds = host[0], host[1], host[2]
        labels = None if self.labels is None else torch.where(host[3] > 0, self.num_classes, self.labels[idx])
        if self.data is not None:
            x0 = self.data[idx]
        else:
            x0 = self.loader.get(step, idx_host).to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
            x0 = x0.contiguous(memory_format=self.fmt)
        if self.cfg.hflip:
            x0 = torch.where(host[-1].view(-1, 1, 1, 1) > 0, x0.flip(-1), x0)
        return x0, t, seeds, labels

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    # ------------------------------------------------------------------ one step
    def _forward_loss(self, x0, t, seeds, labels=None):
        # fused: ε drawn in-kernel and regenerated by the loss, never stored; reference: the
        # same ε materialised at the same address, eager arithmetic
        ops = fused if self.cfg.fused else reference
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            x_t = ops.q_sample(x0, t, self.schedule, seeds=seeds)
            out = self.net(x_t, t) if labels is None else self.net(x_t, t, labels)
            return ops.diffusion_loss(out, t, self.schedule, x0=x0, seeds=seeds, weights=self.loss_weights,
                                      prediction=self.cfg.prediction)

    def train_step(self) -> None:
        cfg = self.cfg
        x0, t, seeds, labels = self._batch(self.step)
        with K.value_checks(False):  # t is drawn in range by construction: no wait for the GPU
            loss = self.forward_loss(x0, t, seeds, labels)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=True)
        for group in self.opt.param_groups:  # stateless warm-up: resumes exactly
            group["lr"] = cfg.lr * min(1.0, (self.step + 1) / max(cfg.warmup, 1))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema.parameters()), self.params, 1.0 - decay)
        self._pending.append(loss.detach())
        self.step += 1

    # ------------------------------------------------------------------ the loop
    def fit(self, steps: Optional[int] = None) -> list:
        """Train until `steps` (default config.steps) optimizer steps have been taken. Holds
        the output folder's lock while it runs (and removes what killed writes left)."""
        end = self.cfg.steps if steps is None else steps
        if isinstance(end, bool) or not isinstance(end, int) or end < 1:
            raise ValueError(f"steps: expected a positive int, got {end!r}")
        if self.step >= end:
            self._say(f"the run is at step {self.step}; {end} steps asked: nothing to do"
                      + (" (the run is complete)" if self.step == end else " (pass more steps to continue it)"))
            return self.history
        if self.lock is not None:
            self.lock.acquire()
            ckpt.remove_stale_temps(self._ckpt_dir())
        # SIGINT / SIGTERM: noted, the step in flight finishes and is kept (io/stop.py). A DDP rank
        # may see one stop twice (Slurm signals every process of the job, and torchrun forwards
        # its own copy to its workers), so there a repeat is absorbed: the launcher's SIGKILL
        # after its grace period is the hard stop.
        signals = stop.deferred("finishing this step and writing a checkpoint", repeat_acts=self.world == 1)
        if self.world > 1 and self._vote is None:
            self._vote = _StopVote()
        vote = self._vote
        try:
            with compile_errors_explained(), signals:
                self._loop(end, signals, vote)
            if vote is not None:
                vote.close()
        except BaseException:
            if self.source is not None:
                self.loader.close()
            if self.lock is not None:
                self.lock.release()
                self._discard_if_empty()
            raise
        if self.source is not None:
            self.loader.close()  # its workers: a later fit() starts them again at the step it resumes from
        if self.lock is not None:
            self.lock.release()
        if self.progress:
            sys.stderr.write("\n")
        return self.history

    def _loop(self, end: int, signals, vote=None) -> None:
        cfg = self.cfg
        while self.step < end:
            self.train_step()
            signum = signals.signum if vote is None else vote(signals.signum)  # DDP: every rank the same step
            if signum:  # SIGINT or SIGTERM: the step is finished; keep it, then stop
                self._interrupted(signum, end, vote)
            at_end = self.step == end
            if self.step % cfg.log_every == 0 or at_end:
                self._read_losses()
            if self.out_dir is not None and self.rank == 0:
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or at_end:
                    self._read_losses()  # never checkpoint a non-finite state
                    self.save()
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or at_end):
                    self.sample_grid()

    def _interrupted(self, signum: int, end: int, vote=None):
        """Write the checkpoint of the finished step (rank 0), wait until it is written (DDP: a
        rank that exited first would make torchrun kill rank 0 mid-write), and stop."""
        self._read_losses()
        kept = "no out_dir: nothing kept"
        if self.out_dir is not None:
            kept = f"checkpoint {self.save()}" if self.rank == 0 else "checkpoint written by rank 0"
        if vote is not None:
            vote.barrier()
        how = "; run the same command with --resume to continue" if self.out_dir is not None else ""
        raise stop.Interrupted(signum, f"stopped after step {self.step} of {end}; {kept}{how}")

    def _discard_if_empty(self) -> None:
        """A run that failed before keeping anything leaves no folder behind that it made."""
        if not self.created or self.lock.fd is not None or ckpt.list_checkpoints(self._ckpt_dir()):
            return
        self.lock.path.unlink(missing_ok=True)
        for folder in (self._ckpt_dir(), self.out_dir):
            try:
                folder.rmdir()  # only if empty: a grid or anything else stays
            except OSError:
                pass

    def _say(self, text: str) -> None:
        if self.rank == 0:
            sys.stderr.write(text + "\n")

    def _read_losses(self) -> None:
        """Pull the losses since the last read back to the host (one wait for the GPU),
        stop at the first non-finite one, report progress."""
        if not self._pending:
            return
        vals = torch.stack(self._pending).tolist()
        self._pending = []
        first = self.step - len(vals) + 1
        for i, v in enumerate(vals):
            if not math.isfinite(v):
                good = ckpt.newest_valid(self._ckpt_dir(), self.run) if self.out_dir is not None else None
                where = f"the last good checkpoint is {good[0]}" if good else "no good checkpoint was written"
                raise FloatingPointError(f"loss became non-finite ({v}) at step {first + i}; stopped, {where}")
        self.history.extend(zip(range(first, self.step + 1), vals))
        if self.progress:
            t0, s0 = self._tick
            now = time.perf_counter()
            rate = (self.step - s0) * self.cfg.batch_size * self.world / max(now - t0, 1e-9)
            eta = (self.cfg.steps - self.step) * self.cfg.batch_size * self.world / max(rate, 1e-9)
            sys.stderr.write(f"\rstep {self.step}/{self.cfg.steps}  loss {sum(vals) / len(vals):.4f}  "
                             f"{rate:.0f} images/s  ETA {int(eta) // 60}m{int(eta) % 60:02d}s ")
            sys.stderr.flush()
            self._tick = (now, self.step)

    # ------------------------------------------------------------------ outputs
    def _ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def sample_grid(self, path=None) -> Path:
        """EMA samples through the Sampler, as a PNG grid (out_dir/samples-<step>.png)."""
        c = self.model.config
        sampler = Sampler(self.ema, self.schedule, dtype=torch.float32, channels_last=self.cuda, compile=False,
                          prediction=self.cfg.prediction,
                          shape=(c.in_channels, c.sample_size, c.sample_size), progress=self.progress)
        if self.progress:
            sys.stderr.write(f"\nsampling a grid of {self.cfg.sample_batch} images from the EMA weights: "
                             f"{sampler.plan.method.label()}\n")
        labels = None if self.num_classes is None else torch.arange(self.cfg.sample_batch) % self.num_classes
        images = sampler.run(batch=self.cfg.sample_batch, seed=self.cfg.seed, labels=labels)
        path = path or self.out_dir / f"samples-{self.step:09d}.png"
        return save_grid(images, path, scale=max(1, 64 // c.sample_size))

    def state(self) -> tuple:
        names = [n for n, _ in self.model.named_parameters()]
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{n}": p for n, p in zip(names, self.ema.parameters())})
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for key, v in st.items():
                tensors[f"optim.{i}.{key}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.cuda:
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "run": self.run, "identity": self.identity(), "step": self.step, "train_config": asdict(self.cfg),
            "world": self.world, "data_size": self.n, "model_config": _config_dict(self.model),
            "param_groups": opt["param_groups"],
        }
        return tensors, meta

    def save(self) -> Path:
        tensors, meta = self.state()
        if self.lock is not None:
            with self.lock:  # re-entrant for fit(), which already holds it
                self.last_checkpoint = ckpt.write(self._ckpt_dir(), self.step, tensors, meta, keep=self.cfg.keep)
        else:
            self.last_checkpoint = ckpt.write(self._ckpt_dir(), self.step, tensors, meta, keep=self.cfg.keep)
        return self.last_checkpoint

    def load(self, path, tensors=None, meta=None) -> None:
        """Continue the run of checkpoint `path`: refused if this Trainer's model, data or any
        EXACT setting differs from the run's (every difference listed)."""
        if tensors is None:
            tensors, meta = ckpt.read(path)
        theirs, mine = meta.get("model_config") or {}, _config_dict(self.model) or {}
        if theirs != mine:
            diff = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)}
            raise ValueError(f"checkpoint {path} is for another model: its config differs in {diff} (checkpoint, this model)")
        if "identity" in meta:
            want, have = meta["identity"], json.loads(json.dumps(self.identity()))
            diff = {k: (want.get(k), have.get(k)) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)}
            if diff:
                lines = ", ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"resume: {path} belongs to a run with other settings ({lines}); these decide the run "
                                 f"sample by sample, so resuming with them changed would not continue it. Only "
                                 f"{', '.join(SAFE)} may change on resume")
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        want = self.model.state_dict()
        bad = sorted(set(want) ^ set(model_sd)) + [k for k in want if k in model_sd and want[k].shape != model_sd[k].shape]
        if bad:
            raise ValueError(f"checkpoint {path} does not fit this model: mismatched tensors {bad[:5]}")
        self.model.load_state_dict(model_sd)
        with torch.no_grad():
            for (n, p) in zip([n for n, _ in self.model.named_parameters()], self.ema.parameters()):
                p.copy_(tensors[f"ema.{n}"])
        state = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v.to(self.device) if key != "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if self.cuda and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = meta["step"]
        self.run = meta.get("run", self.run)
        self.last_checkpoint = Path(path)
        self.history, self._pending = [], []
        self._tick = (time.perf_counter(), self.step)


def _check_labels(labels, n_images: int, n_classes: int) -> torch.Tensor:
    """A class-conditional model's training labels: (N,) ints in [0, num_classes)."""
    if labels is None:
        raise ValueError(f"data: a class-conditional model (num_classes={n_classes}) trains on (images, labels); "
                         f"got images alone")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"data: expected integer labels, got {labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != (n_images,):
        raise ValueError(f"data: expected one label an image ({n_images},), got shape {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"data: expected labels in [0, {n_classes}) (num_classes), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def _fingerprint(data: torch.Tensor) -> str:
    """sha256 of the training images (shape and float32 bytes): a resume on other data is refused."""
    x = data.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()[:16]


def _config_dict(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    d = asdict(cfg)
    if d.get("num_classes", 0) is None:  # unconditional: as checkpoints written before the key existed
        del d["num_classes"]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # as JSON gives it back


class _StopVote:
    """The ranks of a DDP run agree on the step to stop at. Each step a rank posts the signal it
    noted (0: none) to a MAX all-reduce on a CPU gloo group, without waiting, and reads the
    result of the one it posted a step before: every rank reads the same vote at the same step,
    one step after the signal, and the GPU is never waited on."""

    def __init__(self):
        self.group = dist.new_group(backend="gloo")  # a collective: every rank calls fit, which makes it
        self.work, self.flag = None, None

    def __call__(self, signum: int) -> int:
        agreed = 0
        if self.work is not None:
            self.work.wait()
            agreed = int(self.flag[0])  # a CPU tensor: no GPU sync
        self.flag = torch.tensor([signum], dtype=torch.int64)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def close(self) -> None:
        """At the run's end (every rank took the same steps): collect the last vote posted."""
        if self.work is not None:
            self.work.wait()
            self.work = None
