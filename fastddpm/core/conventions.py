"""A model's sampling conventions: what it predicts and how its own pipeline samples it.

    conv = Conventions(prediction="v", variance="small", clip=True, sources={"prediction": "scheduler_config.json"})
    method, used = conv.resolve("ddpm", steps=None)   # the user's choices win; None takes the model's

`fastddpm.pretrained.load_model` reads them from a diffusers scheduler config or a
checkpoint and attaches them to the model (`model.conventions`); the Sampler and
`generate` start from them, the user may override any, and `used` says where each value
came from (a generation manifest records it).
"""

from dataclasses import dataclass, field

from .plan import Method

DEFAULT = "fastddpm's default"
USER = "given"


@dataclass(frozen=True)
class Conventions:
    prediction: str = "epsilon"  # "epsilon", "v" or "sample"
    variance: str = "large"  # ddpm's σ: "large" (β), "small" (posterior), "none"
    clip: bool = False  # clamp x̂_0 to [-1, 1] (ddpm, ddim)
    spacing: str = "trailing"  # timestep spacing of a respaced chain; "karras": DPM-Solver++ on Karras's σ grid
    offset: int = 0  # diffusers' steps_offset (leading spacing)
    sources: dict = field(default_factory=dict)  # key -> where its value came from; absent: fastddpm's default

    def resolve(self, method="ddpm", steps=None, *, spacing=None, eta=0.0, variance=None, clip=None, clipped_eps=False,
                prediction=None, offset=None, guidance=None, guidance_interval=None) -> tuple:
        """(Method, used): each None takes the model's value; `used` maps every convention to
        (value, source). A variance and clipping apply only where the method has them (ddpm;
        ddpm and ddim), as a diffusers pipeline with its scheduler swapped would."""
        used = {}

        def pick(key, given, applies=True, fallback=None):
            if given is not None:
                used[key] = (given, USER)
                return given
            if not applies:
                used[key] = (fallback, f"{DEFAULT} (the model's {getattr(self, key)!r} does not apply to {method})")
                return fallback
            used[key] = (getattr(self, key), self.sources.get(key, DEFAULT))
            return getattr(self, key)

        multistep = method in ("dpm++2m", "sde-dpm++2m")
        spacing = pick("spacing", spacing, self.spacing != "karras" or multistep, "trailing")  # Karras: DPM-Solver++'s grid
        m = Method(method, steps, spacing, eta,
                   pick("variance", variance, method == "ddpm", "large"),
                   pick("clip", clip, method in ("ddpm", "ddim"), False),
                   clipped_eps,
                   pick("prediction", prediction),
                   pick("offset", offset, spacing == "leading", 0),
                   guidance, guidance_interval)  # the sampler's choice, not a convention of the model
        return m, used


def of(model) -> Conventions:
    """The conventions a model carries (`model.conventions`), else fastddpm's defaults."""
    conv = getattr(model, "conventions", None)
    if conv is None:
        return Conventions()
    if not isinstance(conv, Conventions):
        raise TypeError(f"model.conventions: expected a fastddpm Conventions, got {type(conv).__name__}")
    return conv
