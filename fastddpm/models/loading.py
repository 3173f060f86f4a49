"""Models to sample from: a training run, a checkpoint, a diffusers folder, or a model that ships.

    net, schedule, info = load_model("runs/digits")             # the run's newest valid checkpoint, EMA weights
    net, schedule, info = load_model("fashion-mnist-small")      # shipped with the package (fastddpm/models/weights)
    net, schedule, info = load_model("path/to/diffusers_folder") # save_pretrained output, read locally

Nothing is downloaded. `info` names the source and a hash of the weights (it keys generation
manifests). `export(run, name)` (the command line: `python -m fastddpm.pretrained export RUN NAME`)
makes a shipped model from a run: its EMA weights, model config and schedule, the training
command and curve, beside each other.
"""

import hashlib
import json
from pathlib import Path


from ..io import checkpoint as ckpt
from ..core.schedule import Schedule
from .unet import UNet, UNetConfig

SHIPPED = Path(__file__).parent / "weights"


def shipped() -> list:
    return sorted(p.stem for p in SHIPPED.glob("*.safetensors"))


def weights_hash(tensors: dict) -> str:
    return ckpt.digest(tensors)[:16]


def _config(d: dict) -> UNetConfig:
    return UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _from_checkpoint(path: Path, tensors: dict, meta: dict):
    cfg = _config(meta["model_config"])
    net = UNet(cfg)
    names = [n for n, _ in net.named_parameters()]
    missing = [n for n in names if f"ema.{n}" not in tensors]
    if missing:
        raise ValueError(f"model: checkpoint {path} holds no EMA weights for {missing[:3]}")
    ema = {n: tensors[f"ema.{n}"] for n in names}
    net.load_state_dict(ema, strict=True)
    tc = meta.get("train_config", {})
    schedule = getattr(Schedule, tc.get("schedule", "linear"))(T=tc.get("T", 1000))
    return net, schedule, {"source": str(path), "kind": "checkpoint", "step": meta.get("step"), "hash": weights_hash(ema)}


def _from_shipped(name: str):
    from safetensors.torch import load_file

    path = SHIPPED / f"{name}.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path))
    net = UNet(_config(card["model_config"]))
    net.load_state_dict(tensors, strict=True)
    schedule = getattr(Schedule, card["schedule"])(T=card["T"])
    return net, schedule, {"source": name, "kind": "shipped", "step": card.get("step"), "hash": weights_hash(tensors)}


def _from_diffusers(folder: Path):
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("model: a diffusers folder needs diffusers installed (pip install diffusers)") from e
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
    try:
        theirs = diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    except Exception as e:  # diffusers raises several kinds for a folder without weights
        raise ValueError(f"model: {folder} is not a loadable diffusers UNet2DModel folder ({type(e).__name__}: {e})") from e
    net = UNet.from_diffusers(theirs).eval()
    sched_cfg = folder / "scheduler" / "scheduler_config.json"
    schedule = Schedule.linear()
    if sched_cfg.exists():
        c = json.loads(sched_cfg.read_text())
        if c.get("trained_betas") is not None:
            schedule = Schedule.from_betas(c["trained_betas"])
        elif c.get("beta_schedule", "linear") == "linear":
            schedule = Schedule.linear(c.get("num_train_timesteps", 1000), c.get("beta_start", 1e-4), c.get("beta_end", 0.02))
        elif c.get("beta_schedule") == "squaredcos_cap_v2":
            schedule = Schedule.cosine(c.get("num_train_timesteps", 1000))
        else:
            raise ValueError(f"model: {sched_cfg} has beta_schedule {c.get('beta_schedule')!r}; expected linear or squaredcos_cap_v2")
    sd = {k: v for k, v in net.state_dict().items()}
    return net, schedule, {"source": str(folder), "kind": "diffusers", "step": None, "hash": weights_hash(sd)}


def load_model(spec):
    """(UNet in eval mode, Schedule, info) from a run folder, a checkpoint file, a diffusers
    folder or the name of a shipped model; a clear error when there is nothing usable."""
    if isinstance(spec, str) and spec in shipped():
        net, schedule, info = _from_shipped(spec)
        return net.eval(), schedule, info
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"model: {spec} is neither a file, a folder, nor a shipped model ({', '.join(shipped()) or 'none'})")
    if path.is_file():
        tensors, meta = ckpt.read(path)
        net, schedule, info = _from_checkpoint(path, tensors, meta)
    elif (path / "checkpoints").is_dir() or ckpt.list_checkpoints(path):
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = ckpt.newest_valid(folder)
        if found is None:
            raise ValueError(f"model: {path} holds no checkpoint that verifies")
        net, schedule, info = _from_checkpoint(*found)
    elif (path / "config.json").exists() or (path / "unet" / "config.json").exists():
        net, schedule, info = _from_diffusers(path)
    else:
        raise ValueError(f"model: {path} has no usable weights (no checkpoints/, no .safetensors checkpoint, "
                         f"no diffusers config.json)")
    return net.eval(), schedule, info


def export(run, name: str, command: str = "", out=SHIPPED) -> Path:
    """Ship a run's EMA weights under `name`: NAME.safetensors (the UNet's parameters) and
    NAME.json (model config, schedule, step, command, training curve, source commit)."""
    from safetensors.torch import save_file

    folder = Path(run) / "checkpoints" if (Path(run) / "checkpoints").is_dir() else Path(run)
    found = ckpt.newest_valid(folder)
    if found is None:
        raise ValueError(f"run: no checkpoint that verifies in {folder}")
    path, tensors, meta = found
    net, schedule, info = _from_checkpoint(path, tensors, meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(target))
    tc = meta.get("train_config", {})
    card = dict(name=name, model_config=meta["model_config"], schedule=tc.get("schedule", "linear"), T=tc.get("T", 1000),
                step=meta.get("step"), train_config=tc, command=command, parameters=net.num_parameters(),
                sha256=hashlib.sha256(target.read_bytes()).hexdigest(), source_checkpoint=path.name)
    curve = Path(run) / "curve.json"
    if curve.exists():
        card["curve"] = json.loads(curve.read_text())
    target.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return target
