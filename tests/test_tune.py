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


def test_tune_refuses_guidance_for_an_unconditional_model():
    from fastddpm.tune import tune

    with pytest.raises(ValueError, match="guidance: this model is unconditional"):
        tune("digits", "dpm++2m", 5, guidance=2.0)
    with pytest.raises(ValueError, match="learn_iters: expected an int >= 0"):
        tune("digits", "dpm++2m", 5, learn_iters=-1)
    with pytest.raises(ValueError, match="lr: expected a learning rate"):
        tune("digits", "dpm++2m", 5, lr=0.0)


# ---- learned coefficients (tune --learn): Method.scales, the chain that is their reference, learn ----

SCALABLE_CASES = [("ddim", {}), ("dpm++2m", {}), ("dpm++3m", {}), ("unipc", dict(order=3)), ("ipndm", dict(order=2))]


def _scales(K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(tuple((1 + 0.2 * (torch.rand(6, generator=g, dtype=torch.float64) - 0.5)).tolist()) for _ in range(K))


def test_scales_multiply_the_eps_rows_weights_and_ones_change_nothing():
    from fastddpm.core.plan import SCALED

    s = Schedule.linear()
    for name, opts in SCALABLE_CASES:
        a = Plan.build(s, name, steps=5, **opts)
        assert torch.equal(Plan.build(s, name, steps=5, scales=((1.0,) * 6,) * 5, **opts).rows, a.rows)
        sc = _scales(5)
        b = Plan.build(s, name, steps=5, scales=sc, **opts)
        want = a.rows.clone()
        for j, col in enumerate(SCALED.values()):
            want[:, int(col)] *= torch.tensor([r[j] for r in sc], dtype=torch.float64)
        torch.testing.assert_close(b.rows, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name, opts", SCALABLE_CASES[:2] + SCALABLE_CASES[4:])
def test_a_v_model_with_scales_samples_what_its_eps_twin_does(name, opts):
    # the factors act on the ε rows: the same network as a v model (v = (ε − β̄ x)/ᾱ) must give the same images
    from fastddpm.pretrained import load_model

    net, schedule, _ = load_model("digits")
    ac = schedule.alphas_cumprod.double()

    class VTwin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            a, b = ac[t].sqrt().view(-1, 1, 1, 1).float(), (1 - ac[t]).sqrt().view(-1, 1, 1, 1).float()
            return (self.net(x, t) - b * x) / a

    sc = _scales(5, seed=4)
    eps = Sampler(net, schedule, method=name, steps=5, scales=sc, compile=False, progress=False, **opts).run(batch=8)
    v = Sampler(VTwin(), schedule, method=name, steps=5, scales=sc, prediction="v", compile=False, progress=False,
                shape=(1, 8, 8), **opts).run(batch=8)
    torch.testing.assert_close(v, eps, rtol=0, atol=5e-4)  # float32 through 1/ᾱ near the noise end


@pytest.mark.parametrize("method, opts, scales, message", [
    ("ddpm", {}, ((1.0,) * 6,) * 5, "deterministic samplers"),
    ("sde-dpm++2m", {}, ((1.0,) * 6,) * 5, "deterministic samplers"),
    ("ddim", dict(eta=1.0), ((1.0,) * 6,) * 5, "not 'ddim' η=1"),
    ("ddim", {}, ((1.0,) * 6,) * 4, "expected 5 rows"),
    ("ddim", {}, ((1.0,) * 5,) * 5, "expected 5 rows"),
    ("ddim", {}, ((float("nan"),) * 6,) * 5, "finite factors"),
    ("ddim", {}, "1", "expected 5 rows"),
])
def test_scales_refusals(method, opts, scales, message):
    with pytest.raises(ValueError, match=message):
        Plan.build(Schedule.linear(), method, steps=5, scales=scales, **opts)


def test_the_reference_refuses_a_scaled_plan():
    from fastddpm import reference

    p = Plan.build(Schedule.linear(), "ddim", steps=3, scales=((1.1,) * 6,) * 3)
    with pytest.raises(ValueError, match="scales: a refined plan's learned coefficients are not the papers' equations"):
        reference.sample(lambda x, t: x, Schedule.linear(), torch.arange(2), (1, 4, 4), p)


@pytest.mark.parametrize("name, opts", SCALABLE_CASES)
def test_the_chain_is_the_samplers_run_with_scales(name, opts):
    # the torch chain tune descends through and the fused kernel's run are one function of the factors
    from fastddpm.kernels import STREAM_PRIOR, randn
    from fastddpm.pretrained import load_model
    from fastddpm.tune import chain

    net, schedule, _ = load_model("digits")
    sc = _scales(6, seed=1)
    sampler = Sampler(net, schedule, method=name, steps=6, scales=sc, compile=False, progress=False, **opts)
    seeds = torch.arange(12, dtype=torch.int64) + 7
    want = sampler.run(seeds=seeds)
    x = randn((12, 1, 8, 8), seeds, torch.zeros(12, dtype=torch.int64), STREAM_PRIOR)
    with torch.no_grad():
        got = chain(net, sampler.plan, x, torch.tensor(sc, dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)  # float32, the same rows in another order of operations
    plain = Sampler(net, schedule, method=name, steps=6, compile=False, progress=False, **opts).run(seeds=seeds)
    assert (plain - want).abs().max() > 1e-2  # the factors matter


def test_the_guided_chain_is_the_guided_samplers_run():
    from fastddpm.kernels import STREAM_PRIOR, randn
    from fastddpm.pretrained import load_model
    from fastddpm.tune import chain

    net, schedule, _ = load_model("fashion-mnist-cond")
    sc = _scales(4, seed=2)
    seeds = torch.arange(4, dtype=torch.int64)
    labels = torch.tensor([3, 0, 9, 5])
    for w in (0.0, 1.0, 2.5):
        sampler = Sampler(net, schedule, method="dpm++2m", steps=4, guidance=w, scales=sc, compile=False, progress=False)
        want = sampler.run(seeds=seeds, labels=labels)
        x = randn((4, 1, 28, 28), seeds, torch.zeros(4, dtype=torch.int64), STREAM_PRIOR)
        with torch.no_grad():
            got = chain(net, sampler.plan, x, torch.tensor(sc, dtype=torch.float64), labels)
        # float32, and the Sampler's channels-last convolutions sum in another order than the chain's
        torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
        plain = Sampler(net, schedule, method="dpm++2m", steps=4, guidance=w, compile=False, progress=False)
        assert (plain.run(seeds=seeds, labels=labels) - want).abs().max() > 1e-2


def test_learn_lowers_the_held_out_error_and_keeps_its_best():
    from fastddpm.kernels import STREAM_PRIOR, randn
    from fastddpm.pretrained import load_model
    from fastddpm.tune import learn

    net, schedule, _ = load_model("digits")
    net.requires_grad_(True)  # (a model being trained, say): learn leaves its flags and its .grad alone
    seeds = torch.arange(48, dtype=torch.int64) + 10**12
    x = randn((48, 1, 8, 8), seeds, torch.zeros(48, dtype=torch.int64), STREAM_PRIOR)
    target = Sampler(net, schedule, method="unipc", order=3, steps=100, compile=False, progress=False).run(seeds=seeds).double()
    plan = Plan.build(schedule, "ddim", steps=4)
    scales, rec = learn(net, plan, x, target, iters=15, lr=0.1, batch=32)
    assert rec["learn_seeds"] == 36 and rec["held_out_seeds"] == 12
    assert rec["mse_after"]["val"] < 0.9 * rec["mse_before"]["val"]  # measured when written: 0.0410 -> 0.0322
    assert rec["mse_after"]["train"] < rec["mse_before"]["train"] and 1 <= rec["kept_iter"] <= 15
    assert scales.shape == (4, 6) and not torch.equal(scales, torch.ones(4, 6, dtype=torch.float64))
    again, rec2 = learn(net, plan, x, target, iters=15, lr=0.1, batch=16)  # micro-batches of another size: the same
    torch.testing.assert_close(again, scales, rtol=1e-6, atol=0)
    assert all(p.requires_grad for p in net.parameters()) and all(p.grad is None for p in net.parameters())


def test_a_refined_plan_runs_its_scales_and_its_file_is_checked(tmp_path):
    from fastddpm.core.plan import SCALED
    from fastddpm.pretrained import load_model
    from fastddpm.sampling.generate import generate

    net, schedule, _ = load_model("digits")
    sc = [list(r) for r in _scales(5, seed=3)]
    d = _plan(scales={"columns": list(SCALED), "values": sc})
    a = Sampler(net, schedule, plan=d, compile=False, progress=False).run(batch=8)
    b = Sampler(net, schedule, method="ipndm", order=2, timesteps=(999, 819, 549, 319, 149), scales=sc, compile=False,
                progress=False).run(batch=8)
    assert torch.equal(a, b)
    p = tmp_path / "p.json"
    p.write_text(json.dumps(d))
    m = generate("digits", n=8, out=tmp_path / "g", plan=str(p), batch=8, progress=False)
    assert m["config"]["method"]["scales"] == sc
    bad = tuned.sealed({**{k: v for k, v in d.items() if k != "plan_hash"}, "scales": {"columns": ["x"], "values": sc}})
    with pytest.raises(ValueError, match="damaged: scales"):
        tuned.read(bad)


@pytest.mark.slow
def test_tune_a_guided_model_with_learned_coefficients(tmp_path):
    from fastddpm.tune import tune

    d = tune("fashion-mnist-cond", "dpm++2m", 4, grid=10, refine=2, seeds=16, guidance=2.0, learn_iters=3, lr=0.05,
             progress=False, cache=tmp_path)
    assert d["method"]["guidance"] == 2.0 and len(d["timesteps"]) == 4
    assert d["objective"]["learned"]["iters"] == 3 and d["objective"]["learned"]["held_out_seeds"] == 4
    from fastddpm.pretrained import load_model

    net, schedule, _ = load_model("fashion-mnist-cond")
    s = Sampler(net, schedule, plan=d, compile=False, progress=False)
    assert s.plan.method.guidance == 2.0 and s.plan.timesteps == tuple(d["timesteps"])
    Sampler(net, schedule, plan=d, guidance=2.0, compile=False, progress=False)  # the plan's own w may be restated
    with pytest.raises(ValueError, match=r"given with \['guidance'\] too"):
        Sampler(net, schedule, plan=d, guidance=3.0)


def test_shipped_plans_belong_to_their_model_and_generate_takes_them_by_name(tmp_path):
    from fastddpm.models.loading import load_model, shipped_plans
    from fastddpm.sampling.generate import generate

    plans = shipped_plans("digits")
    assert plans, "the digits model ships its tuned plans (fastddpm/models/weights/plans/digits)"
    _, schedule, info = load_model("digits")
    for name, p in plans.items():  # each made for this model, by a command it records
        d = tuned.read(p)
        tuned.check_for(d, schedule, "epsilon", model_hash=info["hash"], method=d["method"]["name"])
        assert "fastddpm" in d["command"] and d["wall_s"] > 0 and d["tune_seeds"]["start"] == tuned.TUNE_SEED_BASE
    name = sorted(plans)[0]
    m = generate("digits", n=4, out=tmp_path / "g", plan=name, batch=4, progress=False)
    assert m["config"]["plan"] == tuned.read(plans[name])["plan_hash"]
    with pytest.raises(ValueError, match=r"plan: nope is neither a plan file nor a plan shipped with 'digits' \(its plans: "):
        generate("digits", n=4, out=tmp_path / "h", plan="nope", batch=4, progress=False)
    with pytest.raises(ValueError, match="it ships none"):
        from fastddpm.models.loading import SHIPPED

        generate(str(SHIPPED / "digits.safetensors"), n=4, out=tmp_path / "h", plan="nope", batch=4, progress=False)
    assert not (tmp_path / "h").exists()


def test_the_sampler_takes_a_shipped_plan_by_name_and_refuses_one_made_for_another_model():
    from fastddpm import UNet
    from fastddpm.models.loading import load_model, model_identity, shipped_plans

    net, schedule, info = load_model("digits")
    d = tuned.read(shipped_plans("digits")["ipndm2-5"])
    by_name = Sampler(net, schedule, plan="ipndm2-5", compile=False, progress=False)
    assert by_name.tuned == d
    assert torch.equal(by_name.run(batch=8, seed=1),
                       Sampler(net, schedule, plan=d, compile=False, progress=False).run(batch=8, seed=1))
    with pytest.raises(ValueError, match=r"plan: nope is neither a plan file nor a plan shipped with 'digits' \(its plans: "):
        Sampler(net, schedule, plan="nope")
    bare = UNet(net.config)  # the same weights in a UNet built by hand: the same hash as load_model's
    bare.load_state_dict(net.state_dict())
    assert model_identity(bare) == (None, None, info["hash"])
    Sampler(bare, schedule, plan=d, compile=False, progress=False)
    with pytest.raises(ValueError, match="plan: ipndm2-5 is not a file, and a plan is found by name only for a shipped model"):
        Sampler(bare, schedule, plan="ipndm2-5")
    with torch.no_grad():
        next(bare.parameters()).add_(1e-3)  # weights changed since the plan was tuned
    with pytest.raises(ValueError, match=f"plan: made for another model \\(digits, hash {info['hash']}\\), this one's hash is "):
        Sampler(bare, schedule, plan=d)
    with torch.no_grad():
        next(net.parameters()).mul_(1.01)  # a loaded model changed afterwards: its parameters' hash, not the load's
    with pytest.raises(ValueError, match=f"plan: made for another model \\(digits, hash {info['hash']}\\)"):
        Sampler(net, schedule, plan="ipndm2-5")
    other, schedule2, oinfo = load_model("fashion-mnist-small")  # same schedule and prediction, another model
    with pytest.raises(ValueError, match=f"made for another model .*this one's hash is {oinfo['hash']}"):
        Sampler(other, schedule2, plan=d)
    with pytest.raises(ValueError, match="neither a plan file nor a plan shipped with 'fashion-mnist-small' \\(it ships none"):
        Sampler(other, schedule2, plan="ipndm2-5")


def test_bench_quality_plan_refusals_come_before_any_work(tmp_path):
    from fastddpm.bench.quality import main

    p = tmp_path / "p.json"
    p.write_text(json.dumps(_plan()))
    (tmp_path / "other.json").write_text(json.dumps(_plan(model_hash="ffff")))
    (tmp_path / "bad.json").write_text(p.read_text()[:40])
    out = tmp_path / "out"
    for kw, message in [(dict(plans=[str(p)]), "plan: tuned plans are measured in the --solvers table"),
                        (dict(plans=[str(p)], solvers=True, tuned=True), "--tuned makes its own plans"),
                        (dict(plans=[str(tmp_path / "other.json")], solvers=True), "made for another model"),
                        (dict(plans=[str(tmp_path / "bad.json")], solvers=True), "not a plan file"),
                        (dict(plans=["nope"], solvers=True), "neither a plan file nor a plan shipped with 'digits'")]:
        with pytest.raises(ValueError, match=message):
            main("digits", out=out, **kw)
        assert not out.exists()
