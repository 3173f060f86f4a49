"""A model's sampling conventions: what it predicts and how its own pipeline samples it.

    conv = Conventions(prediction="v", variance="small", clip=True, sources={"prediction": "scheduler_config.json"})
    method, used = conv.resolve("ddpm", steps=None)   # the user's choices win; None takes the model's

`fastddpm.pretrained.load_model` reads them from a diffusers scheduler config or a
checkpoint and attaches them to the model (`model.conventions`); the Sampler and
`generate` start from them, the user may override any, and `used` says where each value
came from (a generation manifest records it).
"""

from dataclasses import dataclass, field

from .plan import SOLVERS, Method

DEFAULT = "fastddpm's default"
USER = "given"


@dataclass(frozen=True)
class Conventions:
    prediction: str = "epsilon"  # "epsilon", "v" or "sample"
    variance: str = "large"  # ddpm's σ: "large" (β), "small" (posterior), "none"; "learned" (a learned-Σ model's own)
    learned_sigma: bool = False  # the model outputs 2C channels, ε̂ (or v, x_0) then v ∈ [−1, 1] (Nichol & Dhariwal 2021)
    clip: bool = False  # clamp x̂_0 to [-1, 1] (ddpm, ddim)
    clipped_eps: bool = False  # ddim with clip: ε re-derived from the clipped x̂_0 (OpenAI's ddim_sample always does)
    spacing: str = "trailing"  # timestep spacing; "karras" / "logsnr": a multistep solver's σ grid (Karras; uniform λ)
    offset: int = 0  # diffusers' steps_offset (leading spacing)
    # a multistep solver's own options, as the model's scheduler config sets them; they apply when the
    # sampler is that solver (solver_of: "unipc", or "dpm++" for DPMSolverMultistepScheduler)
    solver_of: str = None
    order: int = None  # UniPC's solver_order
    solver_type: str = None  # UniPC's "bh1" / "bh2"
    lower_order_final: bool = None
    disable_corrector: tuple = ()
    sources: dict = field(default_factory=dict)  # key -> where its value came from; absent: fastddpm's default

    def resolve(self, method="ddpm", steps=None, *, spacing=None, eta=0.0, variance=None, clip=None, clipped_eps=None,
                prediction=None, offset=None, guidance=None, guidance_interval=None, order=None, solver_type=None,
                corrector=None, disable_corrector=None, lower_order_final=None, timesteps=None, scales=None) -> tuple:
        """(Method, used): each None takes the model's value; `used` maps every convention to
        (value, source). A variance and clipping apply only where the method has them (ddpm;
        ddpm and ddim), a Karras or logSNR grid and a solver's options only to the solvers
        they are for, as a diffusers pipeline with its scheduler swapped would."""
        used = {}
        if self.learned_sigma:
            if variance is not None and variance != "learned":
                raise ValueError(f"variance: this model learns its variance (learned Σ: its output's second half, from "
                                 f"{self.sources.get('learned_sigma', 'its conventions')}), so it takes no variance option; "
                                 f"got {variance!r} (leave it unset, or 'learned')")
        elif variance == "learned":
            raise ValueError("variance: 'learned' samples with the model's own variance, and this model has none (it outputs "
                             "one prediction, not a prediction and a variance): use large, small or none")

        def pick(key, given, applies=True, fallback=None, record=True):
            if given is not None:
                used[key] = (given, USER)
                return given
            if not applies:
                if record:
                    used[key] = (fallback, f"{DEFAULT} (the model's {getattr(self, key)!r} does not apply to {method})")
                return fallback
            if record or key in self.sources:
                used[key] = (getattr(self, key), self.sources.get(key, DEFAULT))
            return getattr(self, key)

        solver = method in SOLVERS
        spacing = pick("spacing", spacing, self.spacing not in ("karras", "logsnr") or solver, "trailing")
        family = "unipc" if method == "unipc" else "dpm++" if method in SOLVERS and method.startswith(("dpm++", "sde-dpm++")) else None
        mine = family is not None and family == self.solver_of  # the scheduler config's own solver
        kept = dict(record=self.solver_of is not None)  # a model without solver options records none
        clip = pick("clip", clip, method in ("ddpm", "ddim"), False)
        m = Method(method, steps, spacing, eta,
                   pick("variance", variance, method == "ddpm", "large"),
                   clip,
                   pick("clipped_eps", clipped_eps, method == "ddim" and clip, False, record=self.clipped_eps),
                   pick("prediction", prediction),
                   pick("offset", offset, spacing == "leading", 0),
                   guidance, guidance_interval,  # the sampler's choice, not a convention of the model
                   order=pick("order", order, mine and method == "unipc", None, **kept),
                   solver_type=pick("solver_type", solver_type, mine and method == "unipc", None, **kept),
                   corrector=corrector,
                   disable_corrector=pick("disable_corrector", disable_corrector, mine and method == "unipc", (), **kept),
                   lower_order_final=pick("lower_order_final", lower_order_final,
                                          mine and method in ("unipc", "dpm++3m", "sde-dpm++3m"), None, **kept),
                   timesteps=None if timesteps is None else tuple(timesteps), scales=scales)
        if self.learned_sigma:
            used["learned_sigma"] = (True, self.sources.get("learned_sigma", DEFAULT))
        return m, used


def of(model) -> Conventions:
    """The conventions a model carries (`model.conventions`), else fastddpm's defaults."""
    conv = getattr(model, "conventions", None)
    if conv is None:
        return Conventions()
    if not isinstance(conv, Conventions):
        raise TypeError(f"model.conventions: expected a fastddpm Conventions, got {type(conv).__name__}")
    return conv
