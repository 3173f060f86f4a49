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
import inspect
import json
import os
import re
import shutil
from pathlib import Path

import torch


from ..io import checkpoint as ckpt
from .. import kernels as K
from ..core.conventions import Conventions
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
    schedule, conv = _trained_conventions(meta.get("train_config", {}), "checkpoint")
    net.conventions = conv
    return net, schedule, {"source": str(path), "kind": "checkpoint", "step": meta.get("step"), "hash": weights_hash(ema),
                           "conventions": conv}


def _trained_conventions(tc: dict, kind: str) -> tuple:
    """(Schedule, Conventions) of a model trained by fastddpm's Trainer, from its TrainConfig
    (older ones, without prediction / zero_snr, trained ε on the plain schedule)."""
    schedule = getattr(Schedule, tc.get("schedule", "linear"))(T=tc.get("T", 1000))
    if tc.get("zero_snr", False):
        schedule = schedule.rescale_zero_snr()
    where = f"{kind}: train_config.prediction" if "prediction" in tc else f"{kind}: fastddpm's Trainer trained ε-prediction"
    return schedule, Conventions(prediction=tc.get("prediction", "epsilon"), sources={"prediction": where})


def _from_shipped(path: Path, name: str):
    """A shipped model: NAME.safetensors (the UNet's parameters) and NAME.json (its card), by
    name or by path (a copy of the pair anywhere)."""
    from safetensors.torch import load_file

    try:
        card = json.loads(path.with_suffix(".json").read_text())
        card["model_config"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"model: {path.with_suffix('.json')} beside {path.name} is not a shipped model's card "
                         f"({type(e).__name__}: {e})") from None
    tensors = load_file(str(path))
    net = UNet(_config(card["model_config"]))
    net.load_state_dict(tensors, strict=True)
    schedule, conv = _trained_conventions({"schedule": card["schedule"], "T": card["T"], **card.get("train_config", {})}, "shipped")
    net.conventions = conv
    return net, schedule, {"source": name, "kind": "shipped", "step": card.get("step"), "hash": weights_hash(tensors),
                           "conventions": conv}


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
    legacy = folder / "scheduler_config.json"  # the hub's older DDPM folders: a root-level config, alone or beside scheduler/
    if legacy.exists():
        if sched_cfg.exists() and _read_json(legacy) != _read_json(sched_cfg):
            raise ValueError(f"model: {folder} has two scheduler configs that disagree, scheduler/scheduler_config.json and "
                             f"a legacy scheduler_config.json at the root; fastddpm will not pick one: remove the stale one")
        if not sched_cfg.exists():
            sched_cfg = legacy
    schedule, net.conventions = Schedule.linear(), Conventions()
    if sched_cfg.exists():
        try:
            c = json.loads(sched_cfg.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"model: {sched_cfg} is not readable JSON ({type(e).__name__}: {e})") from e
        if not isinstance(c, dict):
            raise ValueError(f"model: {sched_cfg} holds a {type(c).__name__}, expected a JSON object")
        schedule, net.conventions = read_scheduler_config(c, str(sched_cfg.relative_to(folder)))
    C = net.config.in_channels
    want = 2 * C if net.conventions.learned_sigma else C
    if net.config.out_channels != want:
        raise ValueError(f"model: {folder}'s UNet has out_channels={net.config.out_channels} and in_channels={C}, but its "
                         f"scheduler config {'learns' if net.conventions.learned_sigma else 'does not learn'} the variance, "
                         f"which needs out_channels={want}")
    sd = {k: v for k, v in net.state_dict().items()}
    return net, schedule, {"source": str(folder), "kind": "diffusers", "step": None, "hash": weights_hash(sd),
                           "conventions": net.conventions}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"model: {path} is not readable JSON ({type(e).__name__}: {e})") from e


# What each diffusers scheduler-config key means to fastddpm. A key is honoured (read into the
# schedule or the conventions), accepted because its value changes nothing here, or refused by
# name; a key not in this table is refused too, never ignored.
VARIANCE_TYPES = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large", "fixed_large_log": "large",
                  "learned_range": "learned"}  # learned_range: the model's second half, Nichol & Dhariwal's v
NEUTRAL = {  # key: the values at which it changes nothing fastddpm does (or a test of the value)
    "_class_name": lambda v: isinstance(v, str), "_diffusers_version": lambda v: True,  # diffusers metadata
    "_use_default_values": lambda v: True, "_name_or_path": lambda v: True,
    "thresholding": lambda v: v is False,
    "dynamic_thresholding_ratio": lambda v: True, "sample_max_value": lambda v: True,  # read only with thresholding
    "set_alpha_to_one": lambda v: v is True,  # DDIM: the last step lands on ᾱ = 1, as fastddpm's do
    "algorithm_type": lambda v: v in ("dpmsolver++", "sde-dpmsolver++"),
    "euler_at_final": lambda v: v is False, "predict_x0": lambda v: v is True, "solver_p": lambda v: v is None,
    "use_exponential_sigmas": lambda v: v is False,
    "use_beta_sigmas": lambda v: v is False,
    "use_flow_sigmas": lambda v: v is False, "use_dynamic_shifting": lambda v: v is False,
    "flow_shift": lambda v: True, "time_shift_type": lambda v: True,  # read only with flow sigmas / dynamic shifting
    "final_sigmas_type": lambda v: v == "zero", "lambda_min_clipped": lambda v: v is None or v == float("-inf"),
}
HONOURED = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr",
            "prediction_type", "predict_epsilon", "variance_type", "clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset",
            "use_karras_sigmas", "use_lu_lambdas", "solver_order", "solver_type", "lower_order_final", "disable_corrector")
SOLVER_CLASSES = {"UniPCMultistepScheduler": "unipc", "DPMSolverMultistepScheduler": "dpm++"}  # whose solver options are read


def _with_class_defaults(c: dict) -> tuple:
    """c with each honoured key it lacks set to its scheduler class's default (what that
    class's pipeline would use), and the set of keys so filled; c as it is when the class is
    not a diffusers scheduler here."""
    try:
        import diffusers

        cls = getattr(diffusers, str(c.get("_class_name", "")), None)
        params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    except (ImportError, TypeError, ValueError):
        params = {}
    filled = {k: p.default for k, p in params.items() if k in HONOURED and k not in c and p.default is not p.empty}
    return {**c, **filled}, set(filled)


def read_scheduler_config(c: dict, where: str = "scheduler_config.json") -> tuple:
    """(Schedule, Conventions) from a diffusers scheduler config; a ValueError naming the first
    key whose value fastddpm cannot honour."""

    def refuse(key, why):
        raise ValueError(f"model: {where} has {key}={c[key]!r}: {why}")

    c, defaulted = _with_class_defaults(c)

    for key in c:
        if key not in HONOURED and key not in NEUTRAL:
            refuse(key, "fastddpm does not know this key, and refuses it rather than sample the model under other conventions")
        if key in NEUTRAL and not NEUTRAL[key](c[key]):
            refuse(key, "fastddpm cannot honour this value (it implements DPM-Solver++ in data prediction with zero final σ, "
                        "UniPC predicting x_0 with its own UniP, no thresholding, no exponential/beta/flow σ grids, and "
                        "DDIM with set_alpha_to_one)")
    T = c.get("num_train_timesteps", 1000)
    if c.get("trained_betas") is not None:
        schedule = Schedule.from_betas(c["trained_betas"])
    else:
        kind = c.get("beta_schedule", "linear")
        start, end = c.get("beta_start", 1e-4), c.get("beta_end", 0.02)
        if kind == "linear":
            schedule = Schedule.linear(T, start, end)
        elif kind == "scaled_linear":
            schedule = Schedule.scaled_linear(T, start, end)
        elif kind == "squaredcos_cap_v2":
            schedule = Schedule.cosine(T)
        else:
            refuse("beta_schedule", "expected linear, scaled_linear or squaredcos_cap_v2")
    if c.get("rescale_betas_zero_snr", False):
        schedule = schedule.rescale_zero_snr()
    conv, src = {}, {}

    def take(ours, key, value):
        conv[ours], src[ours] = value, f"{where}: {key}" + (f" (absent: {c['_class_name']}'s default)" if key in defaulted else "")

    if "prediction_type" in c:
        try:
            take("prediction", "prediction_type", K.prediction_name(c["prediction_type"]))
        except ValueError:
            refuse("prediction_type", "expected epsilon, v_prediction or sample")
    if "predict_epsilon" in c:  # diffusers before 0.13: True an ε model, False an x₀ model (prediction_type's ancestor)
        if not isinstance(c["predict_epsilon"], bool):
            refuse("predict_epsilon", "expected true or false")
        implied = "epsilon" if c["predict_epsilon"] else "sample"
        if "prediction_type" in c and "prediction_type" not in defaulted and conv.get("prediction") != implied:
            refuse("predict_epsilon", f"contradicts prediction_type={c['prediction_type']!r} beside it")
        if "prediction_type" not in c or "prediction_type" in defaulted:
            take("prediction", "predict_epsilon", implied)
    if c.get("variance_type") is not None:
        if c["variance_type"] == "learned":
            refuse("variance_type", "diffusers reads 'learned' as the variance itself and OpenAI's LEARNED as its log: "
                                    "the two disagree, no published DDPM checkpoint uses it, and fastddpm will not guess "
                                    "(learned_range, OpenAI's and diffusers' shared meaning, is honoured)")
        if c["variance_type"] not in VARIANCE_TYPES:
            refuse("variance_type", f"expected one of {sorted(VARIANCE_TYPES)}")
        take("variance", "variance_type", VARIANCE_TYPES[c["variance_type"]])
        if VARIANCE_TYPES[c["variance_type"]] == "learned":
            take("learned_sigma", "variance_type", True)
    if "clip_sample" in c:
        take("clip", "clip_sample", bool(c["clip_sample"]))
    if conv.get("clip") and c.get("clip_sample_range", 1.0) != 1.0:
        refuse("clip_sample_range", "fastddpm clips x̂_0 to [-1, 1] only")
    if "timestep_spacing" in c:
        if c["timestep_spacing"] not in ("leading", "trailing", "linspace"):
            refuse("timestep_spacing", "expected leading, trailing or linspace")
        take("spacing", "timestep_spacing", c["timestep_spacing"])
    if "steps_offset" in c:
        take("offset", "steps_offset", c["steps_offset"])
    if c.get("use_karras_sigmas", False) is True:  # a multistep solver on Karras et al.'s σ grid
        take("spacing", "use_karras_sigmas", "karras")
    if c.get("use_lu_lambdas", False) is True:  # ... or uniform in λ (Lu et al.)
        if c.get("use_karras_sigmas", False) is True:
            refuse("use_lu_lambdas", "given with use_karras_sigmas: one σ grid only")
        take("spacing", "use_lu_lambdas", "logsnr")
    _solver_options(c, take, refuse)
    return schedule, Conventions(**conv, sources=src)


def _solver_options(c: dict, take, refuse) -> None:
    """A multistep scheduler's own options: UniPC's solver_order, solver_type, lower_order_final
    and disable_corrector; DPMSolverMultistepScheduler's solver_order (which of dpm++2m / dpm++3m
    its pipeline ran: the sampler's method names it), solver_type (midpoint only) and
    lower_order_final. Each applies when the sampler is that solver; any other scheduler's are
    refused by name."""
    cls = c.get("_class_name")
    family = SOLVER_CLASSES.get(cls)
    if cls is None:  # a config dict not from a saved file (scheduler.config) has no class name: its keys say which
        family = "unipc" if "predict_x0" in c or "disable_corrector" in c else "dpm++" if "algorithm_type" in c else None
    for key in ("solver_order", "solver_type", "lower_order_final", "disable_corrector"):
        if key not in c:
            continue
        if family is None:
            refuse(key, f"a multistep solver's option, in a config of {cls or 'no scheduler class'} (fastddpm reads it from "
                        f"{' and '.join(SOLVER_CLASSES)} configs)")
        take("solver_of", "_class_name", family)
    if family is None:
        return
    order, kind = c.get("solver_order", 2), c.get("solver_type")
    if isinstance(order, bool) or order not in (1, 2, 3):
        refuse("solver_order", "expected 1, 2 or 3")
    if family == "unipc":
        if "solver_order" in c:
            take("order", "solver_order", order)
        if kind is not None:
            if kind not in ("bh1", "bh2"):
                refuse("solver_type", "expected bh1 or bh2 (UniPC's B(h))")
            take("solver_type", "solver_type", kind)
        disable = c.get("disable_corrector", [])
        if not isinstance(disable, list) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in disable):
            refuse("disable_corrector", "expected a list of step indices")
        if disable:
            take("disable_corrector", "disable_corrector", tuple(disable))
    else:
        if kind not in (None, "midpoint"):
            refuse("solver_type", "fastddpm's DPM-Solver++ is the midpoint form (diffusers' default)")
        if c.get("disable_corrector"):
            refuse("disable_corrector", "DPM-Solver++ has no corrector")
    if "lower_order_final" in c:
        if not isinstance(c["lower_order_final"], bool):
            refuse("lower_order_final", "expected true or false")
        take("lower_order_final", "lower_order_final", c["lower_order_final"])


def load_model(spec, flags=None):
    """(network in eval mode, Schedule, info) from a run folder, a checkpoint file, a diffusers
    folder, the name of a shipped model, or an OpenAI guided-diffusion / improved-diffusion
    `.pt` (its UNetModel's state dict: `flags` are the checkpoint's MODEL_FLAGS and
    DIFFUSION_FLAGS as OpenAI's README gives them, or a preset's name; None: the preset of the
    file's name, as published, e.g. 64x64_diffusion.pt). A clear error when there is nothing
    usable. The model carries its conventions (`net.conventions`, also `info["conventions"]`):
    what it predicts, its variance (learned, for learned-Σ models), clipping and timestep
    spacing, each with where it was read."""
    if flags is not None and not (isinstance(spec, (str, os.PathLike)) and Path(spec).suffix in TORCH_SUFFIXES):
        raise ValueError(f"flags: OpenAI's flags describe a guided-diffusion / improved-diffusion .pt checkpoint; "
                         f"{spec!r} is not one (a fastddpm or diffusers model carries its own configuration)")
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"model: expected a path (a run folder, a checkpoint, a diffusers folder) or a shipped model's "
                        f"name ({', '.join(shipped()) or 'none'}), got {type(spec).__name__}")
    if isinstance(spec, str) and spec in shipped():
        return _identified(*_from_shipped(SHIPPED / f"{spec}.safetensors", spec))
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"model: {spec} is neither a file, a folder, nor a shipped model ({', '.join(shipped()) or 'none'})")
    if path.is_file() and path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        net, schedule, info = _from_shipped(path, str(path))  # a shipped model's weights, its card beside them
    elif path.is_file() and path.suffix in TORCH_SUFFIXES:
        net, schedule, info = _from_torch_file(path, flags)
    elif path.is_file():
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
    return _identified(net, schedule, info)


def _identified(net, schedule, info) -> tuple:
    """The loaded network in eval mode, carrying `net.identity` ({source, kind, hash}: what a tuned
    plan records of its model), so that a Sampler given a plan checks the plan was made for it and
    finds a shipped model's plans by name."""
    net.identity = {k: info[k] for k in ("source", "kind", "hash")}
    return net.eval(), schedule, info


PARAMETER_HASHED = ("shipped", "checkpoint")  # kinds whose hash is weights_hash of the UNet's own parameters


def model_identity(model):
    """(source, kind, hash) of a model as a tuned plan records it, or None when nothing is known:
    what load_model attached (`model.identity`), the hash taken again from the parameters of a
    fastddpm UNet whose hash is theirs (a shipped model's, a checkpoint's: weights changed since
    loading are another model); for a UNet without it, its parameters' hash, source and kind None."""
    ident = getattr(model, "identity", None)
    if not (isinstance(ident, dict) and {"source", "kind", "hash"} <= set(ident)):
        ident = None
    if isinstance(model, UNet) and (ident is None or ident["kind"] in PARAMETER_HASHED):
        now = weights_hash(dict(model.named_parameters()))
        return (None, None, now) if ident is None else (ident["source"], ident["kind"], now)
    return None if ident is None else (ident["source"], ident["kind"], ident["hash"])


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SHIPPED_PLANS = SHIPPED / "plans"  # SHIPPED_PLANS/<model>/<name>.json: tuned plans of the shipped models (fastddpm.tune)


def shipped_plans(model: str) -> dict:
    """{name: path} of the tuned plans shipped beside a shipped model's weights (none for other models)."""
    folder = SHIPPED_PLANS / model
    return {p.stem: p for p in sorted(folder.glob("*.json"))} if model in shipped() and folder.is_dir() else {}


def plan_file(plan, model: str):
    """A --plan argument as given (a path or a plan's dict), or, when it names no file and `model` is a
    shipped model with a plan of that name beside its weights, that plan's path; else a clear error."""
    if not isinstance(plan, (str, os.PathLike)) or Path(plan).exists():
        return plan
    mine = shipped_plans(model)
    if str(plan) in mine:
        return mine[str(plan)]
    raise ValueError(f"plan: {plan} is neither a plan file nor a plan shipped with {model!r} ("
                     + (f"its plans: {', '.join(mine)}" if mine else "it ships none") + ")")


def _torch_state(path: Path) -> dict:
    """A .pt file's contents as data: torch.load(weights_only=True), which unpickles tensors,
    containers and numbers only, never code; anything else is a clear error."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a pickled object, RuntimeError for a damaged zip, ...
        raise ValueError(f"model: {path} is not a state dict torch can read as data (weights_only=True refuses "
                         f"anything but tensors and containers; {type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"model: {path} holds a {type(obj).__name__}, expected a state dict (a dict of tensors)")
    return obj


def _from_torch_file(path: Path, flags):
    obj = _torch_state(path)
    if "input_blocks.0.0.weight" in obj:
        return _from_openai(path, obj, flags)
    if "ema" in obj and "model" in obj and "step" in obj:  # denoising-diffusion-pytorch's Trainer.save
        return _from_lucidrains(path, obj, flags)
    if flags is not None:
        raise ValueError(f"flags: given, but {path} is not an OpenAI UNetModel state dict (it has no input_blocks.0.0.weight)")
    keys = ", ".join(list(map(str, obj))[:6])
    raise ValueError(f"model: {path} is neither an OpenAI guided-diffusion / improved-diffusion UNetModel state dict "
                     f"(input_blocks.*, time_embed.*) nor another format fastddpm reads; its first keys: {keys}")


def _from_openai(path: Path, state: dict, flags):
    from . import adm

    if flags is None:
        if path.stem not in adm.PRESETS:
            raise ValueError(f"model: {path.name} is an OpenAI UNetModel checkpoint, and its file name is not one of the "
                             f"published ones ({', '.join(adm.PRESETS)}): pass its flags (flags=, --model-flags), the "
                             f"MODEL_FLAGS and DIFFUSION_FLAGS it was trained with, as OpenAI's README writes them")
        flags, where = path.stem, f"the published {path.stem}.pt's flags (OpenAI's README)"
    else:
        where = f"the preset {flags}" if isinstance(flags, str) and flags in adm.PRESETS else "the flags given"
    f = adm.parse_flags(flags)
    if f["timestep_respacing"]:
        raise ValueError(f"flags: --timestep_respacing {f['timestep_respacing']} is a sampling choice, not the model's: "
                         f"pass --method / --steps / --spacing (OpenAI's 'ddimN' is method ddim, spacing leading)")
    cfg = adm.config_from_flags(f)
    net = adm.ADM(cfg)
    _load_strict(net, state, path)
    schedule = Schedule.from_betas(adm.betas(f["noise_schedule"], f["diffusion_steps"]))
    learned = f["learn_sigma"]
    src = {k: f"{path.name}: {where}" for k in ("prediction", "variance", "learned_sigma")}
    src["clip"] = "OpenAI's image_sample.py default (clip_denoised=True)"
    src["clipped_eps"] = "OpenAI's ddim_sample (ε re-derived from the clipped x̂_0)"
    conv = Conventions(prediction="sample" if f["predict_xstart"] else "epsilon",
                       variance="learned" if learned else ("small" if f.get("sigma_small") else "large"),
                       learned_sigma=learned, clip=True, clipped_eps=True, sources=src)
    net.conventions = conv
    canon = json.dumps({k: v for k, v in sorted(f.items()) if k not in adm.TRAINING_ONLY}, sort_keys=True)
    digest = hashlib.sha256((weights_hash(net.state_dict()) + canon).encode()).hexdigest()[:16]
    return net, schedule, {"source": str(path), "kind": "openai", "step": None, "hash": digest, "conventions": conv,
                           "flags": {k: v for k, v in sorted(f.items())}}


LUCID_FLAGS = {"image_size": int, "objective": str, "sinusoidal_pos_emb_theta": float, "auto_normalize": bool}
LUCID_OBJECTIVES = {"pred_noise": "epsilon", "pred_v": "v", "pred_x0": "sample"}


def _from_lucidrains(path: Path, obj: dict, flags):
    """A denoising-diffusion-pytorch Trainer's model-N.pt: the EMA Unet (ema_model.model.*), the
    schedule from the file's own betas buffer (its sigmoid schedule is not diffusers'), and what
    the file does not record from flags: --image_size (required), --objective (default: the
    version's default), --sinusoidal_pos_emb_theta (10000), --auto_normalize (True)."""
    from . import adm
    from .lucidrains import LucidConfig, LucidUnet

    version = str(obj.get("version", ""))
    major = re.match(r"(\d+)\.", version)
    if major is None or int(major.group(1)) < 2:
        raise ValueError(f"model: {path} was written by denoising-diffusion-pytorch {version or '(no version recorded)'}; "
                         f"fastddpm reads the 2.x Trainer's files (its Unet with RMSNorm blocks and memory key/values, "
                         f"checked against 2.3.4)")
    ema = obj["ema"]
    if not isinstance(ema, dict) or not any(str(k).startswith("ema_model.model.") for k in ema):
        raise ValueError(f"model: {path} has no EMA weights (ema_model.model.*) in its 'ema' entry")
    given = adm.flag_pairs(flags) if isinstance(flags, str) else dict(flags or {})
    for name, value in list(given.items()):
        if name not in LUCID_FLAGS:
            raise ValueError(f"flags: --{name} is not read from a denoising-diffusion-pytorch file (known: "
                             f"{', '.join(LUCID_FLAGS)}: what the file does not record)")
        kind = LUCID_FLAGS[name]
        if isinstance(value, str) and kind is not str:
            try:
                given[name] = adm._bool(name, value) if kind is bool else kind(value)
            except ValueError:
                raise ValueError(f"flags: --{name} expects a {kind.__name__}, got {value!r}") from None
    if "image_size" not in given:
        raise ValueError(f"flags: {path} does not record its image size (GaussianDiffusion's image_size): pass "
                         f"--model-flags '--image_size N'")
    if given.get("auto_normalize", True) is not True:
        raise ValueError("flags: --auto_normalize False: the model's data range is then whatever the run fed it, which "
                         "the file does not say; fastddpm samples in [-1, 1] (auto_normalize True, the default)")
    objective = given.get("objective", "pred_v")
    if objective not in LUCID_OBJECTIVES:
        raise ValueError(f"flags: --objective expects one of {sorted(LUCID_OBJECTIVES)}, got {objective!r}")
    unet = {k[len("ema_model.model."):]: v for k, v in ema.items() if str(k).startswith("ema_model.model.")}
    betas = ema.get("ema_model.betas")
    if not isinstance(betas, torch.Tensor):
        raise ValueError(f"model: {path} has no ema_model.betas buffer to read its schedule from")
    cfg = LucidConfig.infer(unet, theta=given.get("sinusoidal_pos_emb_theta", 10000.0), image_size=given["image_size"])
    net = LucidUnet(cfg)
    _load_strict(net, unet, path)
    schedule = Schedule.from_betas(betas.to(torch.float64))
    where = (f"{path.name}: --objective given" if "objective" in given else
             f"denoising-diffusion-pytorch {version}'s default objective (pred_v): the file does not record it, pass "
             f"--prediction (or --model-flags '--objective ...') if the run set another")
    src = {"prediction": where, "variance": "denoising-diffusion-pytorch's p_sample (the posterior variance)",
           "clip": "denoising-diffusion-pytorch's p_sample and ddim_sample (x̂_0 clamped)",
           "clipped_eps": "denoising-diffusion-pytorch's ddim_sample (rederive_pred_noise)"}
    conv = Conventions(prediction=LUCID_OBJECTIVES[objective], variance="small", clip=True, clipped_eps=True, sources=src)
    net.conventions = conv
    record = {"version": version, "step": obj.get("step"), **given, "objective": objective}
    canon = json.dumps({k: v for k, v in sorted(record.items()) if k != "step"}, sort_keys=True, default=str)
    digest = hashlib.sha256((weights_hash(net.state_dict()) + canon).encode()).hexdigest()[:16]
    return net, schedule, {"source": str(path), "kind": "denoising-diffusion-pytorch", "step": obj.get("step"), "hash": digest,
                           "conventions": conv, "flags": record}


def _load_strict(net, state: dict, path: Path) -> None:
    """state into net, or a ValueError naming the first key or shape that differs (flags that do not fit the file)."""
    mine = net.state_dict()
    for key, value in mine.items():
        if key not in state:
            raise ValueError(f"model: {path} does not fit these flags: the network has {key} {tuple(value.shape)}, the "
                             f"file has no such key (check --model-flags against the checkpoint's)")
        if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape:
            got = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise ValueError(f"model: {path} does not fit these flags: {key} is {got} in the file, {tuple(value.shape)} "
                             f"in the network they describe (check --model-flags against the checkpoint's)")
    extra = [k for k in state if k not in mine]
    if extra:
        raise ValueError(f"model: {path} does not fit these flags: the file has {extra[0]}"
                         f"{'' if len(extra) == 1 else f' (and {len(extra) - 1} more)'}, which the network they describe lacks")
    net.load_state_dict({k: v.to(mine[k].dtype) for k, v in state.items()}, strict=True)


def export(run, name: str, command: str = "", out=SHIPPED, notes: str = "") -> Path:
    """Ship a run's EMA weights under `name`: NAME.safetensors (the UNet's parameters) and
    NAME.json (model config, schedule, step, command, training curve, notes such as the
    wall time and the machine)."""
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
    if notes:
        card["notes"] = notes
    if curve.exists():
        card["curve"] = json.loads(curve.read_text())
    target.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return target


DIFFUSERS_VARIANCE = {"small": "fixed_small", "large": "fixed_large"}


def export_diffusers(model, out) -> Path:
    """A diffusers DDPMPipeline folder (unet/, scheduler/, model_index.json) of `model` (anything
    load_model reads) that `DDPMPipeline.from_pretrained(out)` loads and samples as fastddpm
    does: the weights, and the schedule and conventions in a DDPMScheduler config. `out` must
    not exist; the folder is written under a temporary name and renamed when complete."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"out: {out} exists; export-diffusers writes a new folder and never over another")
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("export-diffusers needs diffusers installed (pip install diffusers)") from e
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix in TORCH_SUFFIXES:
        raise ValueError(f"model: {model} is an OpenAI or denoising-diffusion-pytorch checkpoint, another architecture "
                         f"than diffusers' UNet2DModel (OpenAI's scale-shift norm, resampling residual blocks and attention "
                         f"layout; lucidrains' RMSNorm blocks and memory key/values): nothing is written")
    net, schedule, info = load_model(model)
    if not isinstance(net, UNet):
        raise ValueError(f"model: {info['source']} is a {info['kind']} network, which diffusers' UNet2DModel cannot hold "
                         f"(another architecture: OpenAI's scale-shift norm, resampling residual blocks and attention "
                         f"layout, or lucidrains' RMSNorm blocks and memory key/values): nothing is written")
    if net.config.num_classes:
        raise ValueError("model: a class-conditional model: diffusers' DDPMPipeline samples without class labels")
    conv = info["conventions"]
    if conv.variance not in DIFFUSERS_VARIANCE:
        raise ValueError(f"model: its variance {conv.variance!r} has no diffusers variance_type (fixed_small, fixed_large)")
    from .unet import config_to_diffusers

    theirs = diffusers.UNet2DModel(**config_to_diffusers(net.config))
    theirs.load_state_dict(net.state_dict(), strict=True)  # the same keys by construction (UNet mirrors UNet2DModel)
    scheduler = diffusers.DDPMScheduler(**_scheduler_kwargs(schedule), prediction_type=DIFF_PREDICTION[conv.prediction],
                                        variance_type=DIFFUSERS_VARIANCE[conv.variance], clip_sample=conv.clip,
                                        clip_sample_range=1.0, thresholding=False,
                                        timestep_spacing=conv.spacing if conv.spacing in ("leading", "trailing", "linspace")
                                        else "trailing", steps_offset=conv.offset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        diffusers.DDPMPipeline(unet=theirs, scheduler=scheduler).save_pretrained(str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    ckpt.fsync_dir(out.parent)
    return out


DIFF_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}


def _scheduler_kwargs(schedule: Schedule) -> dict:
    """The schedule by name where it is one of diffusers' (exactly), else its betas; a zero-SNR
    schedule also sets rescale_betas_zero_snr (idempotent on rescaled betas: DPM-Solver++ then
    takes its 2**-24 terminal ᾱ², as fastddpm does)."""
    T, zero = schedule.T, schedule.zero_terminal_snr
    for name, diff in (("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")):
        named = getattr(Schedule, name)(T=T)
        named = named.rescale_zero_snr() if zero else named
        if torch.equal(named.betas, schedule.betas):
            kw = dict(beta_schedule=diff)
            if name != "cosine":  # the named schedule's own defaults, which made these betas
                params = inspect.signature(getattr(Schedule, name)).parameters
                kw.update(beta_start=params["beta_start"].default, beta_end=params["beta_end"].default)
            return dict(num_train_timesteps=T, rescale_betas_zero_snr=zero, **kw)
    return dict(num_train_timesteps=T, trained_betas=schedule.betas.tolist(), rescale_betas_zero_snr=zero)
