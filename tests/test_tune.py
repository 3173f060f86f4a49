"""Tuned plans (fastddpm.tune, fastddpm.core.tuned): the search against brute force and a
trajectory where a first-order step is exact; grids of a method's own equal to the recipes'; the
plan file's refusals; the plan through Sampler and generate; a small tune on the digits model."""

import itertools
import json

import pytest
import torch

from fastddpm import Sampler, Schedule
from fastddpm.core import tuned
from fastddpm.core.plan import Method, Plan
from fastddpm.tune import costs, shortest


def test_shortest_path_is_the_brute_force_minimum():
    g = torch.Generator().manual_seed(0)
    for G in (5, 8):
        c = torch.rand(G + 1, G + 1, generator=g, dtype=torch.float64)
        for N in range(1, G + 1):
            total, path = shortest(c, N)
            best = min((sum(float(c[a, b]) for a, b in zip((0, *mid), (*mid, G))), (0, *mid, G))
                       for mid in itertools.combinations(range(1, G), N - 1))
            assert abs(total - best[0]) < 1e-12 and tuple(path) == best[1]
    with pytest.raises(ValueError, match="steps: expected 1 to 5"):
        shortest(torch.zeros(6, 6), 6)


def test_costs_vanish_on_a_trajectory_a_first_order_step_follows_exactly():
    # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with fixed (x0, eps): the ODE of a model that always
    # predicts that eps, which DDIM integrates exactly from any point to any other
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 10, generator=g, dtype=torch.float64), torch.randn(3, 10, generator=g, dtype=torch.float64)
    alphas = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    states = torch.stack([a.sqrt() * x0 + (1 - a).sqrt() * eps for a in alphas])
    c = costs(states, eps.expand(4, 3, 10), alphas)
    assert torch.isinf(c[torch.tril_indices(5, 5)[0], torch.tril_indices(5, 5)[1]]).all()  # only forward jumps
    upper = c[torch.triu_indices(5, 5, 1)[0], torch.triu_indices(5, 5, 1)[1]]
    assert upper.abs().max() < 1e-20
    # a wrong ε makes every jump cost what it misses by: a one-step jump's error is (√a_j·√(1-a_i)/√a_i − √(1-a_j))² δ²
    c2 = costs(states, (eps + 0.1).expand(4, 3, 10), alphas)
    a_i, a_j = alphas[1], alphas[3]
    want = ((a_j.sqrt() * (1 - a_i).sqrt() / a_i.sqrt() - (1 - a_j).sqrt()) * 0.1) ** 2
    torch.testing.assert_close(c2[1, 3], want, rtol=1e-9, atol=0)


def test_a_grid_of_its_own_equals_the_recipe_that_made_it():
    s = Schedule.linear()
    for name, opts in (("ddim", {}), ("dpm++2m", {}), ("unipc", dict(order=3)), ("ipndm", {})):
        a = Plan.build(s, name, steps=6, **opts)
        b = Plan.build(s, name, timesteps=a.timesteps, **opts)
        assert b.timesteps == a.timesteps and torch.equal(a.rows, b.rows)
    for bad, msg in [((999, 999, 10), "strictly descending"), ((10, 500), "strictly descending"), ((1000, 5), r"in \[0, 1000\)"),
                     ((), "strictly descending"), ((9.5, 3), "ints")]:
        with pytest.raises(ValueError, match=msg):
            Plan.build(s, "ddim", timesteps=bad)
    with pytest.raises(ValueError, match="steps: 3 given with 2 timesteps"):
        Plan.build(s, "ddim", steps=3, timesteps=(900, 100))
    with pytest.raises(ValueError, match="spacing: 'leading' given with timesteps"):
        Plan.build(s, "ddim", spacing="leading", timesteps=(900, 100))


def _plan(model_hash="c4e749ca7ccdee15", timesteps=(999, 819, 549, 319, 149), method=None, **over):
    d = {"schema": tuned.SCHEMA, "model": "digits", "model_hash": model_hash, "schedule": tuned.schedule_id(Schedule.linear()),
         "prediction": "epsilon", "method": method or {"name": "ipndm", "steps": len(timesteps), "order": 2},
         "timesteps": list(timesteps), "teacher": {"method": "unipc-3", "steps": 500, "grid": 100},
         "tune_seeds": {"start": tuned.TUNE_SEED_BASE, "count": 256},
         "objective": {"before": 0.13, "after": 0.11}, "command": "test", "wall_s": 1.0}
    d.update(over)
    return tuned.sealed(d)


def test_plan_file_refusals(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(_plan()))
    d = tuned.read(p)
    tuned.check_for(d, Schedule.linear(), "epsilon", model_hash="c4e749ca7ccdee15", method="ipndm")
    edited = json.loads(p.read_text())
    edited["timesteps"][1] = 800
    (tmp_path / "e.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="damaged or edited"):
        tuned.read(tmp_path / "e.json")
    (tmp_path / "t.json").write_text(p.read_text()[:50])
    with pytest.raises(ValueError, match="not a plan file"):
        tuned.read(tmp_path / "t.json")
    with pytest.raises(ValueError, match="not a fastddpm plan"):
        tuned.read({"schema": "x"})
    with pytest.raises(ValueError, match="lacks \\['teacher'\\]"):
        tuned.read(tuned.sealed({k: v for k, v in _plan().items() if k not in ("teacher", "plan_hash")}))
    with pytest.raises(ValueError, match="made for another model"):
        tuned.check_for(d, Schedule.linear(), "epsilon", model_hash="0000")
    with pytest.raises(ValueError, match="another schedule"):
        tuned.check_for(d, Schedule.cosine(), "epsilon")
    with pytest.raises(ValueError, match="a epsilon-prediction model, this one predicts v"):
        tuned.check_for(d, Schedule.linear(), "v")
    with pytest.raises(ValueError, match="made for method 'ipndm', not 'ddim'"):
        tuned.check_for(d, Schedule.linear(), "epsilon", method="ddim")
    with pytest.raises(ValueError, match="cannot be read"):
        tuned.read(tmp_path / "absent.json")


def test_sampler_with_a_plan_is_the_method_on_its_timesteps():
    from fastddpm.pretrained import load_model

    net, schedule, _ = load_model("digits")
    d = _plan()
    a = Sampler(net, schedule, plan=d, compile=False, progress=False).run(batch=16, seed=3)
    b = Sampler(net, schedule, method="ipndm", order=2, timesteps=(999, 819, 549, 319, 149), compile=False,
                progress=False).run(batch=16, seed=3)
    c = Sampler(net, schedule, method="ipndm", steps=5, compile=False, progress=False).run(batch=16, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="plan: sets the method.*\\['steps'\\]"):
        Sampler(net, schedule, plan=d, steps=5)
    with pytest.raises(ValueError, match="a epsilon-prediction model, this one predicts v"):
        Sampler(net, schedule, plan=d, prediction="v")


def test_generate_records_the_plan_and_refuses_another_on_resume(tmp_path):
    from fastddpm.sampling.generate import generate

    p, q = tmp_path / "p.json", tmp_path / "q.json"
    p.write_text(json.dumps(_plan()))
    q.write_text(json.dumps(_plan(timesteps=(999, 799, 499, 299, 99))))
    m = generate("digits", n=8, out=tmp_path / "g", plan=str(p), batch=8, progress=False)
    assert m["config"]["plan"] == _plan()["plan_hash"] and m["config"]["method"]["timesteps"] == [999, 819, 549, 319, 149]
    with pytest.raises(ValueError, match="plan: .* in the folder"):
        generate("digits", n=8, out=tmp_path / "g", plan=str(q), batch=8, progress=False)
    with pytest.raises(ValueError, match="made for another model"):
        generate("digits", n=8, out=tmp_path / "h", plan=str(tmp_path / "o.json") if (tmp_path / "o.json").write_text(
            json.dumps(_plan(model_hash="ffff"))) else None, batch=8, progress=False)
    assert not (tmp_path / "h").exists()


@pytest.mark.slow
def test_tune_finds_a_grid_closer_to_the_teacher_on_the_digits(tmp_path):
    from fastddpm.tune import main

    argv = ["--model", "digits", "--method", "ipndm", "--steps", "4", "--grid", "20", "--refine", "4", "--seeds", "64",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "p.json")]
    d = main(argv)
    assert tuned.read(tmp_path / "p.json") == d
    assert d["model_hash"] == "c4e749ca7ccdee15" and d["tune_seeds"] == {"start": 10**12, "count": 64}
    assert len(d["timesteps"]) == 4 and d["timesteps"][0] == 999 and d["timesteps"] != d["default_timesteps"]
    assert d["objective"]["after"] < d["objective"]["before"]  # measured when written: 0.1991 -> 0.1946
    again = main([*argv[:-1], str(tmp_path / "q.json")])  # the same command: the same plan (the teacher from the cache)
    assert again["timesteps"] == d["timesteps"] and again["objective"] == d["objective"]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "5", "--eval-seeds", "100", "--seed-base", "50"], "overlap the evaluation seeds 0..99"),
    (["--steps", "30", "--grid", "20"], "more than the grid's 20 points"),
    (["--steps", "5", "--method", "ddpm"], "invalid choice"),
    (["--steps", "5", "--grid", "300", "--refine", "5"], "more than the schedule's T"),
])
def test_tune_refusals(tmp_path, argv, message, capsys):
    from fastddpm.tune import main

    with pytest.raises((ValueError, SystemExit)) as e:
        main(["--model", "digits", *argv, "--out", str(tmp_path / "p.json")])
    said = str(e.value) + capsys.readouterr().err
    assert message in said and not (tmp_path / "p.json").exists()


def test_tune_refuses_a_class_conditional_model(tmp_path):
    from fastddpm.tune import tune

    with pytest.raises(ValueError, match="class-conditional model's grid"):
        tune("fashion-mnist-cond", "dpm++2m", 5)
