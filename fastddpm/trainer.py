"""Training an ε-prediction DDPM with the fused kernels: no noise tensor is ever stored.

Everything random is addressed by counters, so a run is a function of its config and
seed: sample k of the run (k = (step * world + rank) * batch + i) gets the data index
perm_epoch[k mod N], the noise seed seed * 2**40 + k and the timestep
t = (T * philox(seed, k, stream 3)) >> 32. Resuming from a checkpoint therefore continues exactly,
and a torchrun job with W ranks of batch B trains on the same samples as one process
with batch W * B.
"""

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import kernels as K
from . import reference as R
from .data import as_images, check_images
from .images import save_grid
from .kernels._philox import philox_torch
from .sampler import Sampler
from .schedule import Schedule


STREAM_T = 3  # the Philox stream of the training timesteps


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # optimizer steps in the whole run
    batch_size: int = 128  # per rank
    lr: float = 2e-4  # Ho et al. CIFAR-10
    warmup: int = 500  # linear learning-rate warm-up, in steps
    grad_clip: float = 1.0
    ema_decay: float = 0.9999  # reached gradually: min(decay, (1 + s) / (10 + s))
    weight_decay: float = 0.0
    seed: int = 0
    schedule: str = "linear"  # or "cosine"
    T: int = 1000
    fused: bool = True  # False: the reference path (materialised ε, eager, F.mse_loss)
    compile: bool = False  # torch.compile the forward + loss
    log_every: int = 100
    checkpoint_every: int = 1000  # 0: only at the end
    sample_every: int = 0  # EMA sample grid every this many steps and at the end; 0: never
    sample_batch: int = 64
    keep: int = 2  # checkpoints kept

    def schedule_obj(self) -> Schedule:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule: expected 'linear' or 'cosine', got {self.schedule!r}")
        return getattr(Schedule, self.schedule)(T=self.T)


class Trainer:
    """Trains `model` (a fastddpm UNet, or any module with a .config dataclass) on `data`:
    images (N, C, H, W) in [-1, 1] as a tensor, a TensorDataset or a DataLoader, held on
    the device as one tensor. Checkpoints and sample grids go to out_dir; resume=True
    continues from the newest checkpoint there."""

    def __init__(self, model: nn.Module, data: torch.Tensor, config: TrainConfig = TrainConfig(), *,
                 out_dir=None, device=None, resume: bool = False, progress: bool = True):
        self.cfg = config
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and self.rank == 0
        self.schedule = config.schedule_obj()
        self.table = self.schedule.table(device=self.device)

        data = as_images(data)
        cfg_in = getattr(getattr(model, "config", None), "in_channels", None)
        check_images(data, cfg_in if cfg_in is not None else getattr(data, "shape", (0, 0))[1])
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.data = data.to(self.device, torch.float32).contiguous(memory_format=fmt)
        self.model = model.to(self.device, memory_format=fmt).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net = nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.params = [p for p in self.model.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay, fused=self.cuda)
        self.forward_loss = torch.compile(self._forward_loss) if config.compile else self._forward_loss
        self.step = 0
        self.last_checkpoint = None
        self.history = []  # (step, loss), read back once per log interval
        self._pending = []  # device losses not yet read back
        self._perms = {}  # epoch -> data permutation (the current and the previous)
        self._tick = (time.perf_counter(), 0)
        if resume:
            path = ckpt.latest(self._ckpt_dir()) if self.out_dir is not None else None
            if path is not None:
                self.load(path)

    # ------------------------------------------------------------------ addressing
    def _counter(self, step: int) -> torch.Tensor:
        B = self.cfg.batch_size
        return (step * self.world + self.rank) * B + torch.arange(B)

    def _batch(self, step: int):
        """(x0, t, seeds) of this rank's batch at `step`: a pure function of (config, step, rank)."""
        k = self._counter(step)
        N = self.data.shape[0]
        epochs = k // N
        idx = torch.empty_like(k)
        for e in epochs.unique().tolist():  # a batch spans at most two epochs
            sel = epochs == e
            idx[sel] = self._perm(e)[k[sel] % N]
        words = philox_torch(torch.tensor(self.cfg.seed), k & 0xFFFFFFFF, k >> 32, torch.zeros_like(k), torch.full_like(k, STREAM_T))
        t = (words[0] * self.schedule.T) >> 32  # uniform on [0, T)
        host = torch.stack([idx, t, k + (self.cfg.seed << 40)])  # (3, B): data index, t, noise seed
        if self.cuda:  # pinned + non_blocking: one copy that never waits for the GPU
            host = host.pin_memory()
        idx, t, seeds = host.to(self.device, non_blocking=True)
        return self.data[idx], t, seeds

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = torch.randperm(self.data.shape[0], generator=g)
        return self._perms[epoch]

    # ------------------------------------------------------------------ one step
    def _forward_loss(self, x0, t, seeds):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            if self.cfg.fused:
                x_t = K.q_sample(x0, t, self.table, seeds=seeds)  # ε drawn in-kernel
                return K.eps_mse_loss(self.net(x_t, t), t, seeds=seeds)  # ε regenerated
            noise = K.randn(x0.shape, seeds, t, K.STREAM_NOISING)  # the same ε, materialised
            return F.mse_loss(self.net(R.q_sample(x0, t, self.schedule, noise), t).float(), noise)

    def train_step(self) -> None:
        cfg = self.cfg
        x0, t, seeds = self._batch(self.step)
        with K.value_checks(False):  # t is drawn in range by construction: no wait for the GPU
            loss = self.forward_loss(x0, t, seeds)
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
        """Train until `steps` (default config.steps) optimizer steps have been taken."""
        cfg = self.cfg
        end = cfg.steps if steps is None else steps
        while self.step < end:
            self.train_step()
            at_end = self.step == end
            if self.step % max(cfg.log_every, 1) == 0 or at_end:
                self._read_losses()
            if self.out_dir is not None and self.rank == 0:
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or at_end:
                    self._read_losses()  # never checkpoint a non-finite state
                    self.save()
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or at_end):
                    self.sample_grid()
        if self.progress:
            sys.stderr.write("\n")
        return self.history

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
                last = self.last_checkpoint
                where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
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
                          shape=(c.in_channels, c.sample_size, c.sample_size), progress=False)
        images = sampler.run(batch=self.cfg.sample_batch, seed=self.cfg.seed)
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
            "step": self.step, "train_config": asdict(self.cfg), "world": self.world, "data_size": self.data.shape[0],
            "model_config": _config_dict(self.model), "param_groups": opt["param_groups"],
        }
        return tensors, meta

    def save(self) -> Path:
        tensors, meta = self.state()
        self.last_checkpoint = ckpt.write(self._ckpt_dir(), self.step, tensors, meta, keep=self.cfg.keep)
        return self.last_checkpoint

    def load(self, path) -> None:
        tensors, meta = ckpt.read(path)
        theirs, mine = meta.get("model_config") or {}, _config_dict(self.model) or {}
        if theirs != mine:
            diff = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)}
            raise ValueError(f"checkpoint {path} is for another model: its config differs in {diff} (checkpoint, this model)")
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
        self.last_checkpoint = Path(path)
        self.history, self._pending = [], []
        self._tick = (time.perf_counter(), self.step)


def _config_dict(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # as JSON gives it back
