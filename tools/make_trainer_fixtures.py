#!/usr/bin/env python3
"""Writes tests/fixtures/trainer: the original QoQ-Med trainer maths on small inputs, so the
Rust trainer can be checked without Python.

  policy_loss.json  compute_policy_loss + low_var_kl loss, combined as dp_actor does, and the
                    gradient of that loss with respect to the new log-probs
  advantages.json   compute_grpo_outcome_advantage / compute_drpo_outcome_advantage over one
                    or more steps (DRPO keeps per-domain history between calls)

The original code is not in this repository. Pass copies of verl/trainer/core_algos.py and
verl/utils/torch_functional.py from a checkout of DDVD233/QoQ_Med:

    py=$(bash tools/reference-env.sh); $py -m pip install scikit-learn
    $py tools/make_trainer_fixtures.py --core-algos /path/core_algos.py \
        --torch-functional /path/torch_functional.py [--out tests/fixtures/trainer]

Deterministic (fixed seeds, KMeans random_state=0 inside the original): reruns rewrite
identical files. Prints the k the elbow picks per domain and step.
"""
import argparse, contextlib, hashlib, importlib.util, io, json, math, os, sys, types

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_original(core_algos, torch_functional):
    """Imports core_algos.py as `qoq_ref.trainer.core_algos`; its `from ..utils import
    torch_functional` resolves to the given file (or to a stand-in with masked_mean)."""
    for pkg in ("qoq_ref", "qoq_ref.trainer", "qoq_ref.utils"):
        sys.modules[pkg] = types.ModuleType(pkg)
        sys.modules[pkg].__path__ = []
    # torch_functional only imports the name PrecisionType from torch_dtypes.
    sys.modules["qoq_ref.utils.torch_dtypes"] = types.SimpleNamespace(PrecisionType=object)
    if torch_functional:
        vf = load_module("qoq_ref.utils.torch_functional", torch_functional)
    else:  # same formula as the original (note the eps in the denominator)
        vf = types.ModuleType("qoq_ref.utils.torch_functional")
        vf.masked_mean = lambda v, m, dim=None, eps=1e-8: (v * m).sum(dim=dim) / (m.sum(dim=dim) + eps)
        sys.modules[vf.__name__] = vf
    sys.modules["qoq_ref.utils"].torch_functional = vf
    return load_module("qoq_ref.trainer.core_algos", core_algos)


class F64(torch.Tensor):
    """compute_kl calls .float() on its inputs; this subclass keeps float64 through it."""
    def float(self):
        return self


def js(x):
    """Tensor/array/float -> JSON-ready nested lists; non-finite -> None."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        x = x.tolist()
    if isinstance(x, list):
        return [js(v) for v in x]
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------- policy loss

def policy_case(ca, rng, name, B, T, clip, kl_coef, lens, adv, new_shift, ref_shift):
    old = -rng.exponential(1.0, (B, T)).round(4)
    new = (old + new_shift(rng, (B, T))).round(4)
    ref = (new + ref_shift(rng, (B, T))).round(4)
    mask = (np.arange(T)[None, :] < np.asarray(lens)[:, None]).astype(float)
    adv = np.asarray(adv, float).round(4)
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    new_t = t(new).requires_grad_(True)
    adv_t, mask_t = t(adv)[:, None].expand(B, T), t(mask)
    pg, cf_hi, cf_lo, ppo_kl = ca.compute_policy_loss(
        old_log_probs=t(old), log_probs=new_t, advantages=adv_t, response_mask=mask_t,
        clip_ratio_low=clip[0], clip_ratio_high=clip[1], clip_ratio_dual=clip[2])
    kld = ca.compute_kl(new_t.as_subclass(F64), t(ref).as_subclass(F64), "low_var_kl")
    kl_loss = ca.VF.masked_mean(kld, mask_t).as_subclass(torch.Tensor)
    kl32 = ca.VF.masked_mean(ca.compute_kl(new_t.detach(), t(ref), "low_var_kl"), mask_t)
    assert abs(kl32.item() - kl_loss.item()) <= 1e-5 * max(1.0, abs(kl_loss.item()))
    loss = pg + kl_loss * kl_coef  # dp_actor: pg_loss = pg_loss + kl_loss * kl_coef
    loss.backward()
    return {"name": name, "clip_low": clip[0], "clip_high": clip[1], "dual_clip": clip[2],
            "kl_coef": kl_coef, "old_logp": old.tolist(), "new_logp": new.tolist(),
            "ref_logp": ref.tolist(), "advantages": adv.tolist(), "mask": mask.astype(int).tolist(),
            "expected": {"pg_loss": pg.item(), "pg_clipfrac_higher": cf_hi.item(),
                         "pg_clipfrac_lower": cf_lo.item(), "ppo_kl": ppo_kl.item(),
                         "kl_loss": kl_loss.item(), "loss": loss.item(),
                         "grad_new_logp": js(new_t.grad)}}


def policy_cases(ca):
    rng = np.random.default_rng(20260301)
    paper, sym = (0.2, 0.3, 3.0), (0.2, 0.2, 3.0)
    zero = lambda r, s: np.zeros(s)
    small = lambda r, s: r.normal(0, 0.3, s)
    big = lambda r, s: r.normal(0, 1.5, s)  # ratios far outside [0.8, 1.3] and above 3
    return [
        policy_case(ca, rng, "ratio_one", 3, 5, paper, 0.0, [5, 5, 5], [1.2, -0.7, 0.3], zero, small),
        policy_case(ca, rng, "ratio_one_kl", 2, 4, paper, 0.1, [4, 3], [0.5, -1.5], zero, small),
        policy_case(ca, rng, "high_clip_positive_adv", 3, 6, paper, 1e-4, [6, 6, 6], [1.0, 0.4, 2.0],
                    lambda r, s: r.uniform(-0.6, 0.9, s), small),
        policy_case(ca, rng, "low_and_dual_clip_negative_adv", 3, 6, paper, 1e-4, [6, 6, 6],
                    [-1.0, -0.3, -2.0], big, small),
        policy_case(ca, rng, "mixed_ragged_paper", 4, 7, paper, 1e-4, [7, 3, 5, 1],
                    [0.9, -1.1, 0.0, -0.4], big, small),
        policy_case(ca, rng, "mixed_ragged_symmetric", 4, 7, sym, 0.1, [2, 7, 4, 6],
                    [-0.8, 1.3, -1.7, 0.6], big, small),
        policy_case(ca, rng, "zero_advantage_row", 3, 5, sym, 0.1, [5, 2, 4], [0.0, 0.7, -0.7],
                    small, small),
        # ref far from new: exp(ref-new)-(ref-new)-1 > 10 on some tokens, clamped by compute_kl
        policy_case(ca, rng, "kl_clamped", 2, 6, paper, 0.1, [6, 4], [0.6, -0.9], small,
                    lambda r, s: r.normal(0, 2.0, s)),
    ]


# --------------------------------------------------------------------------- advantages

def question(rng, level, G):
    """G rewards near `level`, on a 1/256 grid (exact in float32), inside [0, 1]."""
    return list(np.clip(np.round((level + rng.uniform(-0.04, 0.04, G)) * 256) / 256, 0, 1))


def check_unambiguous(X, k, what):
    """Asserts that the original's k does not hinge on KMeans' seed: with the best of 20
    k-means++ runs per k the elbow picks the same k, every drop ratio it tests is well away
    from its 0.1 threshold, and the original's final clustering is that best one."""
    from sklearn.cluster import KMeans
    fit = lambda n, s: KMeans(n_clusters=n, n_init=1, random_state=s).fit(X).inertia_
    cap = min(10, len(np.unique(X, axis=0)))
    best = [min(fit(n, s) for s in range(20)) for n in range(1, cap + 1)]
    drops, kb = -np.diff(best), cap
    for i in range(1, len(drops)):
        r = drops[i] / drops[i - 1]
        assert not 0.05 < r < 0.2, f"{what}: drop ratio {r:.3f} too close to 0.1"
        if r < 0.1:
            kb = i + 1
            break
    assert kb == k, f"{what}: original k={k}, best-of-20 k={kb}"
    orig = KMeans(n_clusters=k, n_init="auto", random_state=0).fit(X).inertia_
    assert orig <= best[k - 1] * (1 + 1e-5) + 1e-9, f"{what}: original clustering not optimal"


def run_step(ca, estimator, step, uid_prefix):
    """step: list of (domain, rewards); returns the step record (and prints DRPO's k)."""
    uid, dom, rew = [], [], []
    for q, (d, r) in enumerate(step):
        uid += [f"{uid_prefix}q{q:02d}"] * len(r); dom += [d] * len(r); rew += list(r)
    tlr = torch.zeros(len(rew), 2)
    tlr[:, 1] = torch.tensor(rew)  # the reward sits on the last response token
    mask = torch.ones(len(rew), 2)
    uids, doms = np.array(uid, dtype=object), np.array(dom, dtype=object)
    out = io.StringIO()  # the original prints a debug report; keep our output readable
    with contextlib.redirect_stdout(out):
        if estimator == "grpo":
            adv, _ = ca.compute_grpo_outcome_advantage(tlr, mask, uids)
        else:
            adv, _ = ca.compute_drpo_outcome_advantage(tlr, mask, uids, doms, tlr * 0, tlr * 0)
    vals = adv[:, 0]
    rec = {"rewards": [float(x) for x in rew], "uid": uid, "domain": dom, "expected": js(vals),
           "original_nonfinite": not bool(torch.isfinite(vals).all())}
    if estimator == "drpo":
        k, mu, n = {}, {}, {}
        for d in dict.fromkeys(dom):  # domains of this batch, in order of appearance
            hist = ca.domain_qstats[d]["vectors"]
            with contextlib.redirect_stdout(io.StringIO()):
                k[d] = int(ca._select_k_elbow(np.stack(hist, axis=0), k_max=10))
                check_unambiguous(np.stack(hist, axis=0), k[d], f"{uid_prefix} {d}")
                mu[d] = js(ca._cluster_info_question(hist)[0])
            n[d] = ca.domain_qstats[d]["count"]
        rec["debug"] = {"k_per_domain": k, "mu_d": mu, "n_questions": n}
        print(f"  {uid_prefix}: k={k} n={n} nonfinite={rec['original_nonfinite']}")
    return rec


def advantage_case(ca, name, estimator, steps):
    ca.domain_qstats.clear()
    ca.global_running_stats["q_count"] = 0
    print(f"{name} ({estimator})")
    return {"name": name, "estimator": estimator,
            "steps": [run_step(ca, estimator, s, f"s{i + 1}") for i, s in enumerate(steps)]}


def advantage_cases(ca):
    rng = np.random.default_rng(20260302)
    q = lambda d, lv, G: (d, question(rng, lv, G))
    ties = [("derm", [1.0] * 5), ("derm", [0.0, 0.0, 1.0, 1.0, 1.0]), ("derm", [0.5] * 5),
            ("derm", [0.25, 0.75, 0.25, 0.75, 0.25]), ("derm", [0.0] * 5)]
    grpo = [("any", list(rng.integers(0, 9, 5) / 8)) for _ in range(5)] + ties
    one_dom = [q("cxr", lv, 5) for lv in (0.15, 0.8, 0.15, 0.8, 0.8, 0.15, 0.8, 0.15)]
    # cxr: three levels (k=3 expected); ecg: two levels; derm: four levels
    # Levels spaced so that every drop ratio the elbow looks at is far from its 0.1 threshold.
    levels = {"cxr": (0.1, 0.45, 0.9), "ecg": (0.2, 0.85), "derm": (0.05, 0.45, 0.75, 0.95)}
    per_step = {"cxr": 6, "ecg": 6, "derm": 8}  # equal cluster sizes at every step
    history = [[q(d, lv[i % len(lv)], 4) for d, lv in levels.items() for i in range(per_step[d])]
               for _ in range(4)]
    shared = [1.0, 0.0, 1.0, 1.0, 0.0]  # every "mri" question: this exact vector
    k1 = [[("mri", list(shared)) for _ in range(4)] + [q("cxr", lv, 5) for lv in (0.1, 0.9, 0.5)]
          for _ in range(2)]
    zero_std = [[("cxr", [1.0] * 4), ("cxr", [0.0, 1.0, 1.0, 1.0]), ("cxr", [0.5] * 4),
                 q("cxr", 0.5, 4), ("ecg", [0.75] * 4), q("ecg", 0.3, 4), q("ecg", 0.7, 4)]]
    all_zero = [[("rare", [0.0] * 4), q("cxr", 0.3, 4), q("cxr", 0.8, 4)],
                [("rare", [0.0, 0.25, 0.5, 0.0]), q("cxr", 0.3, 4), q("cxr", 0.8, 4)]]
    return [
        advantage_case(ca, "grpo_one_step", "grpo", [grpo]),
        advantage_case(ca, "drpo_one_domain_one_step", "drpo", [one_dom]),
        advantage_case(ca, "drpo_three_domains_history", "drpo", history),
        advantage_case(ca, "drpo_shared_vector_k1", "drpo", k1),
        advantage_case(ca, "drpo_ties_zero_std", "drpo", zero_std),
        advantage_case(ca, "drpo_all_zero_question", "drpo", all_zero),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--core-algos", required=True, help="path of QoQ_Med verl/trainer/core_algos.py")
    ap.add_argument("--torch-functional", help="path of QoQ_Med verl/utils/torch_functional.py")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "trainer"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ca = load_original(args.core_algos, args.torch_functional)
    with open(args.core_algos, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    source = f"DDVD233/QoQ_Med verl/trainer/core_algos.py, sha256 {sha} (see README.md)"
    os.makedirs(args.out, exist_ok=True)
    for fname, cases in (("policy_loss.json", policy_cases(ca)), ("advantages.json", advantage_cases(ca))):
        with open(os.path.join(args.out, fname), "w") as f:
            json.dump({"source": source, "cases": cases}, f, allow_nan=False)
            f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
