"""Tuned plans: a sampler's timesteps searched for one model (fastddpm.tune), as a file that
travels with the model the way its conventions do.

A plan file is JSON: schema, the model's hash and source, the schedule's T and betas hash, the
method (name, steps and its options), the timesteps (and, refined, `scales`: each step's learned
factors on its weights, core.plan.SCALED), the teacher, the seeds tuned on, the
objective before and after, the command and its wall time, and `plan_hash`, the SHA-256 of
everything else. Reading one checks the hash (a damaged or edited file is refused) and every
field; `check_for` refuses a plan made for another model, schedule or prediction by name.
"""

import hashlib
import json
from pathlib import Path

SCHEMA = "fastddpm.plan/1"
# Tuning seeds: a block far from the evaluation seeds 0..n-1 every table and generate use, so a
# tuned plan cannot have memorised the noise it is judged on.
TUNE_SEED_BASE = 10**12
FIELDS = ("schema", "model", "model_hash", "schedule", "prediction", "method", "timesteps", "teacher", "tune_seeds",
          "objective", "command", "wall_s")


def schedule_id(schedule) -> dict:
    return {"T": schedule.T, "betas_sha256": hashlib.sha256(schedule.betas.numpy().tobytes()).hexdigest()[:16]}


def digest(d: dict) -> str:
    body = {k: v for k, v in d.items() if k != "plan_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def sealed(d: dict) -> dict:
    return {**d, "plan_hash": digest(d)}


def read(plan) -> dict:
    """A plan (a path to its JSON, or the dict), checked: its hash, its schema and fields."""
    what = "plan"
    if isinstance(plan, (str, Path)):
        what = f"plan: {plan}"
        try:
            d = json.loads(Path(plan).read_text())
        except OSError as e:
            raise ValueError(f"{what}: cannot be read ({e.strerror or e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: not a plan file (not JSON: {e})") from None
    elif isinstance(plan, dict):
        d = plan
    else:
        raise TypeError(f"plan: expected a plan file's path or its dict, got {type(plan).__name__}")
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise ValueError(f"{what}: not a fastddpm plan (schema {d.get('schema') if isinstance(d, dict) else None!r}, "
                         f"expected {SCHEMA!r})")
    missing = [k for k in FIELDS if k not in d]
    if missing:
        raise ValueError(f"{what}: damaged: it lacks {missing}")
    if d.get("plan_hash") != digest(d):
        raise ValueError(f"{what}: damaged or edited: its contents do not match its plan_hash {d.get('plan_hash')!r} "
                         f"(make it again with python -m fastddpm.tune)")
    ts = d["timesteps"]
    if not isinstance(ts, list) or not ts or any(not isinstance(t, int) or isinstance(t, bool) for t in ts):
        raise ValueError(f"{what}: damaged: timesteps {ts!r}")
    if not isinstance(d["method"], dict) or "name" not in d["method"]:
        raise ValueError(f"{what}: damaged: method {d['method']!r}")
    sc = d.get("scales")
    if sc is not None:
        from .plan import SCALED

        if not isinstance(sc, dict) or sc.get("columns") != list(SCALED) or not isinstance(sc.get("values"), list) or len(
                sc["values"]) != len(ts):
            raise ValueError(f"{what}: damaged: scales must be {{'columns': {list(SCALED)}, 'values': one row per timestep}}")
    return d


def check_for(d: dict, schedule, prediction: str, model_hash: str = None, method: str = None) -> None:
    """The plan was made for this schedule, prediction, model (when its hash is known) and method."""
    mine = schedule_id(schedule)
    if d["schedule"] != mine:
        raise ValueError(f"plan: made for another schedule ({d['schedule']}), this model's is {mine}")
    if d["prediction"] != prediction:
        raise ValueError(f"plan: made for a {d['prediction']}-prediction model, this one predicts {prediction}")
    if model_hash is not None and d["model_hash"] != model_hash:
        raise ValueError(f"plan: made for another model ({d['model']}, hash {d['model_hash']}), this one's hash is "
                         f"{model_hash}; tune this model: python -m fastddpm.tune --model ...")
    if method is not None and method != d["method"]["name"]:
        raise ValueError(f"plan: made for method {d['method']['name']!r}, not {method!r}")
    if max(d["timesteps"]) >= schedule.T:
        raise ValueError(f"plan: asks for timestep {max(d['timesteps'])} of a schedule of T = {schedule.T}")


def method_options(d: dict) -> dict:
    """The Sampler / Method keyword arguments a plan sets: the method, its options and its grid."""
    m = dict(d["method"])
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.items() if k not in ("name", "steps")}
    scales = d.get("scales")
    if scales is not None:  # a refined plan's learned factors (tune --learn)
        opts["scales"] = tuple(tuple(row) for row in scales["values"])
    return dict(method=m["name"], timesteps=tuple(d["timesteps"]), **opts)


PLAN_SETS = ("method", "timesteps", "order", "solver_type", "corrector", "lower_order_final", "disable_corrector", "scales",
             "guidance")


def arguments(plan, method, **given) -> tuple:
    """(the plan read, {name: value} for every name of PLAN_SETS): what a plan sets, for Sampler
    and generate alike. `given` are the caller's own values of those settings: one not None that
    differs from the plan's is an error (the plan sets it; a guided plan was searched at its w), as
    is a method other than the plan's (the default ddpm counts as not given)."""
    d = read(plan)
    opts = method_options(d)
    mine = {k: opts.get(k) for k in PLAN_SETS}
    given = {k: v for k, v in given.items() if v is not None}
    if method not in ("ddpm", d["method"]["name"]):
        given["method"] = method
    same = {k for k, v in given.items() if k in mine and _same(v, mine[k])}
    clash = sorted(k for k in given if k not in same)
    if clash:
        own = ", ".join(f"{k}={mine[k]!r}" for k in clash if k in mine)
        raise ValueError(f"plan: sets the method, its options, its timesteps (so its steps) and its guidance; given with "
                         f"{clash} too" + (f" (the plan's: {own})" if own else ""))
    return d, mine


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
