"""Multistep solvers as rows: DPM-Solver++(2M, 3M; ODE and SDE), UniPC (bh1, bh2; orders 1-3,
its corrector folded into the next step) and iPNDM (orders 1-4), each step one linear
combination of x_t, this step's model output and at most three earlier ones.

    coef, sigma = solver_coefficients(method, a)   # a: the (K,) ᾱ² the K steps start from

coef[k] is a (5,) float64 vector: the weights of x_t and of the stored outputs u_k, u_{k-1},
u_{k-2}, u_{k-3} (u = x̂_0 for DPM-Solver++ and UniPC, ε̂ for iPNDM) in the state step k lands
on; sigma[k] the weight of its noise z (SDE variants). Steps are taken on the grid a (the last
lands on ᾱ² = 1) in α = √a, σ = √(1 − a), λ = log α − log σ (DPM-Solver's notation), the
noise-level coordinate σ̃ = σ/α for iPNDM. The equations are those of the papers, written as
diffusers writes them; `fastddpm.reference` recomputes every step from them on the data
instead, unfolded (the corrector as its own update), and the tests hold both to diffusers.

Warm-up: a step uses at most as many earlier outputs as there are (orders 1, 2, ... in the
first steps). Warm-down (DPM-Solver++ and UniPC, `lower_order_final`): the final step, which
lands on σ = 0 (λ = ∞), is first order for every solver here: DPM-Solver++ does so whenever
the last σ is zero, and for UniPC a higher order there divides by r_k = 0 (diffusers then
returns inf), while its first-order step is the limit x_s = x̂_0 exactly. That limit is taken
in exact arithmetic: UniPC's bh1 multiplies its empty correction by B(h) = −∞ at that step,
which is where diffusers' bh1 with final_sigmas_type="zero" gets NaN; here the empty sum is
no term at all. With lower_order_final and fewer than 15 steps DPM-Solver++(3M)'s second-last
step is second order (diffusers' rule); UniPC's order is min(order, steps left) (diffusers').
"""

import math

import torch

# iPNDM's Adams-Bashforth weights on ε̂_k, ε̂_{k-1}, ... (Zhang & Chen 2023, iPNDM; the fixed
# multistep weights of PNDM, with lower orders for the first steps)
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def solver_coefficients(m, a: torch.Tensor) -> tuple:
    """(coef (K, 5), sigma (K,)) float64 for a checked Method m on step grid a (see above)."""
    a = [float(v) for v in a] + [1.0]  # the last step lands on ᾱ² = 1
    K = len(a) - 1
    al = [math.sqrt(v) for v in a]
    sg = [math.sqrt(1 - v) for v in a]
    lam = [math.log(al[i]) - math.log(sg[i]) if sg[i] > 0 else math.inf for i in range(K + 1)]
    coef = torch.zeros(K, 5, dtype=torch.float64)
    sigma = torch.zeros(K, dtype=torch.float64)
    if m.name == "ipndm":
        for i in range(K):
            p = min(m.order, i + 1)
            # x/α moves along dσ̃ ε̂: x_s = (α_s/α_t) x_t + α_s (σ̃_s − σ̃_t) Σ_j c_j ε̂_{k-j}
            coef[i, 0] = al[i + 1] / al[i]
            step = al[i + 1] * (sg[i + 1] / al[i + 1] - sg[i] / al[i])
            for j, c in enumerate(AB[p]):
                coef[i, 1 + j] = step * c
        return coef, sigma
    if m.name.endswith(("dpm++2m", "dpm++3m")):
        top = 3 if m.name.endswith("3m") else 2
        sde = m.name.startswith("sde-")
        for i in range(K):
            p = min(top, i + 1)
            if i == K - 1:
                p = 1  # into σ = 0 (diffusers: final_sigmas_type "zero")
            elif i == K - 2 and m.lower_order_final and K < 15:
                p = min(p, 2)
            c, s = _dpm_step(lam, al, sg, i, p, sde)
            coef[i, : len(c)] = torch.tensor(c, dtype=torch.float64)
            sigma[i] = s
        return coef, sigma
    if m.name == "unipc":
        orders = [unipc_order(m, i, K) for i in range(K)]
        pred = [_unipc_predictor(lam, al, sg, i, orders[i], m.solver_type) for i in range(K)]
        for i in range(K):
            cx, row = pred[i]  # over absolute output indices
            total = dict(row)
            if unipc_corrects(m, i):
                # x^c_i = x_i + (corrector − the predictor that made x_i): both start from
                # x^c_{i-1} with the same weight σ_i/σ_{i-1}, so their difference is outputs only
                _, corr = _unipc_corrector(lam, al, sg, i, orders[i - 1], m.solver_type)
                for j in set(corr) | set(pred[i - 1][1]):
                    total[j] = total.get(j, 0.0) + cx * (corr.get(j, 0.0) - pred[i - 1][1].get(j, 0.0))
            coef[i, 0] = cx
            for j, w in total.items():
                coef[i, 1 + (i - j)] += w
        return coef, sigma
    raise ValueError(f"method: {m.name!r} is not a multistep solver")


def unipc_order(m, i: int, K: int) -> int:
    """UniPC's predictor order at step i of K: warm-up, diffusers' lower_order_final, first order into σ = 0."""
    p = min(m.order, K - i) if m.lower_order_final else m.order
    return 1 if i == K - 1 else min(p, i + 1)


def unipc_corrects(m, i: int) -> bool:
    """Step i corrects the state it starts from (diffusers: from the second step on, unless
    disable_corrector names step i - 1)."""
    return m.corrector and i > 0 and (i - 1) not in m.disable_corrector


def _dpm_step(lam, al, sg, i, p, sde):
    """DPM-Solver++ (Lu et al. 2022, data prediction) from grid point i to i + 1 at order p:
    ([x, D weights on u_i, u_{i-1}, u_{i-2}], σ_z); the ODE form or the SDE one (their App. B)."""
    h = lam[i + 1] - lam[i]
    e = math.exp(-h)  # e^{-h}; 0 into σ = 0
    if sde:
        cx, d0 = sg[i + 1] / sg[i] * e, al[i + 1] * (1 - e * e)
        noise = sg[i + 1] * math.sqrt(max(1 - e * e, 0.0))
    else:
        cx, d0 = sg[i + 1] / sg[i], -al[i + 1] * math.expm1(-h)
        noise = 0.0
    if p == 1:
        return [cx, d0], noise
    r0 = (lam[i] - lam[i - 1]) / h
    if p == 2:  # midpoint: D = D0 + ½ D1, D1 = (u_i − u_{i-1}) / r0
        return [cx, d0 * (1 + 0.5 / r0), -d0 * 0.5 / r0], noise
    r1 = (lam[i - 1] - lam[i - 2]) / h
    # D1_0 = (u_i − u_{i-1})/r0, D1_1 = (u_{i-1} − u_{i-2})/r1, D1 = D1_0 + r0/(r0+r1) (D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0+r1)
    if sde:
        c1 = al[i + 1] * ((1 - e * e) / (-2 * h) + 1)
        c2 = al[i + 1] * ((1 - e * e - 2 * h) / (2 * h) ** 2 - 0.5)
    else:
        em1 = math.expm1(-h)
        c1 = al[i + 1] * (em1 / h + 1)
        c2 = -al[i + 1] * ((em1 + h) / h**2 - 0.5)
    d10 = (1 / r0, -1 / r0, 0.0)  # D1_0 over (u_i, u_{i-1}, u_{i-2})
    d11 = (0.0, 1 / r1, -1 / r1)
    diff = [p_ - q for p_, q in zip(d10, d11)]
    D1 = [x + r0 / (r0 + r1) * y for x, y in zip(d10, diff)]
    D2 = [y / (r0 + r1) for y in diff]
    w = [c1 * D1[j] + c2 * D2[j] for j in range(3)]
    return [cx, d0 + w[0], w[1], w[2]], noise


def _b_vector(hh: float, order: int, bh: str):
    """UniPC's B(h) and its b_j = h φ_{j}(h) j! / B(h), j = 1..order (Zhao et al. 2023, diffusers' loop)."""
    h_phi_1 = math.expm1(hh)
    B_h = hh if bh == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact, b = 1, []
    for j in range(1, order + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, B_h, b


def _unipc_predictor(lam, al, sg, i, p, bh):
    """UniP-p from grid point i (its corrected state) to i + 1: (weight of that state, {output index: weight})."""
    h = lam[i + 1] - lam[i]
    hh = -h
    row = {i: -al[i + 1] * math.expm1(hh)}  # −α_s h φ_1(h) u_i
    if p > 1:
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
        _, B_h, b = _b_vector(hh, p, bh)
        if p == 2:
            rhos = [0.5]
        else:
            R = torch.tensor([[r**j for r in rks[:-1]] for j in range(p - 1)], dtype=torch.float64)
            rhos = torch.linalg.solve(R, torch.tensor(b[:-1], dtype=torch.float64)).tolist()
        for k in range(1, p):  # −α_s B(h) Σ ρ_k D1_k, D1_k = (u_{i-k} − u_i)/r_k
            w = -al[i + 1] * B_h * rhos[k - 1] / rks[k - 1]
            row[i - k] = row.get(i - k, 0.0) + w
            row[i] -= w
    return sg[i + 1] / sg[i], row


def _unipc_corrector(lam, al, sg, i, p, bh):
    """UniC-p at grid point i, from the corrected state at i − 1: (its weight, {output index: weight}),
    with the model output at the uncorrected point i (u_i) in the last term."""
    h = lam[i] - lam[i - 1]
    hh = -h
    rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, p)] + [1.0]
    _, B_h, b = _b_vector(hh, p, bh)
    if p == 1:
        rhos = [0.5]
    else:
        R = torch.tensor([[r**j for r in rks] for j in range(p)], dtype=torch.float64)
        rhos = torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()
    row = {i - 1: -al[i] * math.expm1(hh)}
    for k in range(1, p):  # D1_k = (u_{i-1-k} − u_{i-1}) / r_k
        w = -al[i] * B_h * rhos[k - 1] / rks[k - 1]
        row[i - 1 - k] = row.get(i - 1 - k, 0.0) + w
        row[i - 1] -= w
    w = -al[i] * B_h * rhos[-1]  # ρ_p D1_t, D1_t = u_i − u_{i-1}
    row[i] = row.get(i, 0.0) + w
    row[i - 1] -= w
    return sg[i] / sg[i - 1], row
