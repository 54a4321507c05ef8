"""DPZero (arXiv 2310.09639, Alg. 1): the release, its noise, its config errors and the run it produces."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from privtune import atomic as A
from privtune import methods as M
from privtune.data import sample_batch
from privtune.errors import ConfigError
from privtune.methods.dpzero import DPZero
from privtune.privacy import dp
from privtune.privacy.bounds import eps_to_posterior
from privtune.run.keystore import SecretKey
from privtune.run.loop import train

REPO = Path(__file__).resolve().parents[2]


class FakeEngine:
    """pair_losses from fixed per-example losses: the ZO scalars are known exactly."""

    def __init__(self, lp, lm):
        self.lp = torch.tensor(lp, dtype=torch.float64)
        self.lm = torch.tensor(lm, dtype=torch.float64)
        self.batches = []

    def pair_losses(self, pool, idx, seed, eps):
        self.batches.append(list(idx))
        return self.lp[list(idx)], self.lm[list(idx)]


def method_cfg(**kw):
    base = {"name": "dpzero", "noise_multiplier": 0.0, "clip": 1.0, "batch_size": 4, "eps": 1e-3,
            "sampling": "fixed"}
    return M.build_config({"method": {**base, **kw}}).method


def make(cfg, lp, lm, steps=100, key=1234, seed=7):
    return DPZero(cfg, FakeEngine(lp, lm), list(range(len(lp))), seed, steps, secret=SecretKey(key))


def weights(run):
    return A.load_tensors(Path(run) / "model" / "trainable.safetensors")


# ------------------------------------------------------------------------------------------------ the release
def test_noise_free_clipped_release_matches_hand_computation():
    lp = [0.5020, 0.5000, 0.4990, 0.5300, 0.4000, 0.5001, 0.5000, 0.6000]
    lm = [0.5000, 0.5010, 0.4990, 0.5000, 0.5000, 0.5000, 0.5004, 0.5000]
    m = make(method_cfg(clip=2.0), lp, lm)
    for t in range(5):
        rel = m.step(t)
        idx = sample_batch(8, 4, 7, t)
        assert m.engine.batches[-1] == idx  # fixed sampling: MeZO's public batch
        g = [(lp[i] - lm[i]) / 2e-3 for i in idx]
        want = sum(min(max(x, -2.0), 2.0) for x in g) / 4
        assert rel.public == {"projected_grad": [pytest.approx(want, rel=1e-12, abs=1e-12)]}
        assert rel.updates[0][1] == rel.public["projected_grad"][0] and rel.charge == 0.0 and not rel.monitor


def test_noise_std_is_sigma_c_over_b_and_recomputation_is_identical():
    sigma, C_, B = 1.5, 0.5, 4
    lp, lm = [2.0] * 8, [1.0] * 8  # every g_i = 500, clipped to C: the noise-free release is C at every step
    m = make(method_cfg(noise_multiplier=sigma, clip=C_, batch_size=B), lp, lm, steps=4000)
    noise = np.array([m.step(t).public["projected_grad"][0] - C_ for t in range(4000)])
    assert m.noise_std == pytest.approx(sigma * C_ / B)
    assert np.std(noise) == pytest.approx(sigma * C_ / B, rel=0.04)
    assert abs(np.mean(noise)) < 4 * sigma * C_ / B / math.sqrt(4000)
    again = make(method_cfg(noise_multiplier=sigma, clip=C_, batch_size=B), lp, lm, steps=4000)
    assert [again.step(t).updates for t in (0, 17, 3999)] == [m.step(t).updates for t in (0, 17, 3999)]
    other_key = make(method_cfg(noise_multiplier=sigma, clip=C_, batch_size=B), lp, lm, steps=4000, key=99)
    assert other_key.step(0).updates != m.step(0).updates
    # ε is computed from the given σ by the accountant, not by this module
    assert m.epsilon == pytest.approx(dp.gaussian_epsilon(sigma, 4000, B / 8, 1e-5, "rdp", "fixed", dataset_size=8))


def test_poisson_batches_come_from_the_secret_key():
    lp, lm = [0.6] * 200, [0.5] * 200
    cfg = method_cfg(sampling="poisson", batch_size=20)
    a, b = make(cfg, lp, lm), make(cfg, lp, lm, key=5)
    sizes = []
    for t in range(50):
        a.step(t)
        b.step(t)
        sizes.append(len(a.engine.batches[-1]))
    assert a.engine.batches != b.engine.batches  # another key, other batches: membership is not public
    assert 15 < np.mean(sizes) < 25 and len(set(sizes)) > 1  # q·N = 20 on average, random size
    again = make(cfg, lp, lm)
    again.step(3)
    assert again.engine.batches[-1] == a.engine.batches[3]
    # noise-free release: Σ clip(g_i) / B with B the expected batch size (Opacus convention)
    rel = make(cfg, lp, lm).step(0)
    assert rel.public["projected_grad"][0] == pytest.approx(len(a.engine.batches[0]) * 1.0 / 20)


def test_epsilon_calibrates_sigma_once_and_reports_the_dp_summary():
    cfg = method_cfg(noise_multiplier=None, epsilon=2.0, clip=3.0, sampling="poisson")
    m = make(cfg, [0.5] * 16, [0.5] * 16, steps=50)
    assert m.sigma == pytest.approx(dp.gaussian_sigma_for_epsilon(2.0, 1e-5, 50, 4 / 16, "rdp", "poisson"), rel=1e-4)
    assert m.noise_std == pytest.approx(m.sigma * 3.0 / 4)
    s = m.summary({})
    assert s["guarantee"] == "dp" and s["mi_nats"] is None and s["epsilon"] == 2.0 and s["delta"] == 1e-5
    assert s["mia_posterior_bound"] == pytest.approx(eps_to_posterior(2.0, 1e-5))
    assert "Poisson" in s["assumptions"] and "adding or removing" in s["assumptions"] and "RDP" in s["assumptions"]
    led = m.ledger_fields()
    assert led["guarantee"] == "dp" and led["noise_multiplier"] == m.sigma and led["clip"] == 3.0
    assert led["accountant"] == "rdp" and led["sampling"] == "poisson" and led["epsilon"] == 2.0


# ------------------------------------------------------------------------------------------------ bad input
BAD = {
    "epsilon_zero": ({"epsilon": 0, "noise_multiplier": None}, "method.epsilon"),
    "epsilon_negative": ({"epsilon": -1.0, "noise_multiplier": None}, "method.epsilon"),
    "delta_one": ({"delta": 1.0}, "method.delta"),
    "delta_above_one": ({"delta": 1.5}, "method.delta"),
    "delta_zero": ({"delta": 0.0}, "method.delta"),
    "delta_negative": ({"delta": -1e-5}, "method.delta"),
    "clip_zero": ({"clip": 0.0}, "method.clip"),
    "clip_negative": ({"clip": -2.0}, "method.clip"),
    "clip_inf_with_noise": ({"clip": float("inf"), "noise_multiplier": 1.0}, "method.clip"),
    "noise_negative": ({"noise_multiplier": -1.0}, "method.noise_multiplier"),
    "no_budget": ({"noise_multiplier": None}, "method.epsilon"),
    "both_budgets": ({"epsilon": 2.0, "noise_multiplier": 1.0}, "method.epsilon"),
    "unknown_accountant": ({"accountant": "prv"}, "method.accountant"),
    "unknown_sampling": ({"sampling": "shuffle"}, "method.sampling"),
    "lr_epsilon_without_epsilon": ({"lr_epsilon": 2.0}, "method.lr_epsilon"),
    "lr_epsilon_zero": ({"noise_multiplier": None, "epsilon": 1.0, "lr_epsilon": 0.0}, "method.lr_epsilon"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_names_the_field(name):
    over, field = BAD[name]
    with pytest.raises(ConfigError) as e:
        method_cfg(**over)
    assert str(e.value).startswith(field + ":"), str(e.value)


@pytest.mark.parametrize("name", ["dpzero", "dpzo"])
def test_lr_epsilon_scales_the_step_down_with_epsilon_never_up(name):
    def lr(epsilon, **kw):
        cfg = M.build_config({"method": {"name": name, "epsilon": epsilon, "lr": 0.6, **kw}}).method
        return [cfg.lr_at(t, 100) for t in (0, 50)]

    assert lr(0.5) == lr(2.0) == [0.6, 0.6]  # unset: the same lr at every ε
    assert lr(2.0, lr_epsilon=2.0) == [0.6, 0.6]
    assert lr(0.5, lr_epsilon=2.0) == pytest.approx([0.15, 0.15])
    assert lr(8.0, lr_epsilon=2.0) == [0.6, 0.6]  # a looser budget keeps the tuned step
    assert lr(0.5, lr_epsilon=2.0, lr_schedule="linear") == pytest.approx([0.15, 0.075])  # times the schedule


def test_lr_epsilon_steps_are_what_the_transcript_records_and_the_noise_is_unchanged(tmp_path, make_cfg):
    """The scaled step is applied and recorded (replay reads it from the transcript); σ and ε do not depend on it."""
    small = {"train.steps": 3, "task.pool_size": 32, "task.eval_limit": 8, "method.batch_size": 8,
             "method.name": "dpzero", "method.epsilon": 2.0}
    runs = {}
    for tag, extra in (("plain", {}), ("scaled", {"method.lr_epsilon": 8.0})):
        train(make_cfg(**small, **extra, out_dir=str(tmp_path / tag)))
        lines = [json.loads(x) for x in (tmp_path / tag / "transcript.jsonl").read_text().splitlines()]
        runs[tag] = ([x["lr"] for x in lines], json.loads((tmp_path / tag / "privacy.json").read_text()))
    (plain, led_p), (scaled, led_s) = runs["plain"], runs["scaled"]
    assert len(plain) == 3 and scaled == pytest.approx([lr / 4 for lr in plain])
    assert led_p["epsilon"] == led_s["epsilon"] and led_p["noise_multiplier"] == led_s["noise_multiplier"]


def test_unsupported_accountant_sampling_combination_names_the_field():
    cfg = method_cfg(noise_multiplier=None, epsilon=2.0, accountant="pld", sampling="fixed")
    with pytest.raises(ConfigError) as e:
        make(cfg, [0.5] * 16, [0.5] * 16, steps=10)
    assert str(e.value).startswith("method.accountant:"), str(e.value)


CLI_BAD = {
    "epsilon_zero": (["method.epsilon=0"], "method.epsilon"),
    "delta_one": (["method.delta=1"], "method.delta"),
    "delta_zero": (["method.delta=0"], "method.delta"),
    "clip_zero": (["method.clip=0"], "method.clip"),
    "pld_fixed": (["method.accountant=pld", "method.sampling=fixed"], "method.accountant"),
}


@pytest.mark.parametrize("name", sorted(CLI_BAD))
def test_bad_input_through_the_cli(tmp_path, monkeypatch, name):
    from typer.testing import CliRunner

    from privtune.cli import app

    over, field = CLI_BAD[name]
    out = tmp_path / "out"
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))  # keep any secret key out of the real keystore
    r = CliRunner().invoke(app, ["train", "-c", str(REPO / "configs" / "tiny_dpzero.yaml"), f"out_dir={out}", "-q",
                                 "task.pool_size=64", "task.eval_limit=8", "method.batch_size=8", *over])
    err = r.stderr.strip()
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("error: " + field), err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ whole runs
def test_sigma_zero_and_no_clipping_is_mezo_bit_for_bit(tmp_path, make_cfg):
    small = {"train.steps": 6, "task.pool_size": 32, "task.eval_limit": 16, "method.batch_size": 8}
    mezo = make_cfg(**small, out_dir=str(tmp_path / "mezo"))
    dpz = make_cfg(**small, **{"out_dir": str(tmp_path / "dpzero"), "method.name": "dpzero",
                      "method.noise_multiplier": 0.0, "method.clip": float("inf"), "method.sampling": "fixed"})
    train(mezo)
    train(dpz)
    ta = (tmp_path / "mezo" / "transcript.jsonl").read_text()
    assert ta == (tmp_path / "dpzero" / "transcript.jsonl").read_text() and ta.count("\n") == 6
    wa, wb = weights(tmp_path / "mezo"), weights(tmp_path / "dpzero")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    priv = json.loads((tmp_path / "dpzero" / "privacy.json").read_text())
    assert priv["guarantee"] == "none" and priv["mia_posterior_bound"] == 1.0


def test_private_run_writes_dp_privacy_json_and_resumes_bitwise(tmp_path, make_cfg, monkeypatch, stop_after):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "20240101")  # both runs draw the same secret noise
    over = {"train.steps": 8, "train.checkpoint_every": 3, "task.pool_size": 32, "task.eval_limit": 16,
            "method.batch_size": 8, "method.name": "dpzero", "method.epsilon": 2.0, "method.clip": 5.0}
    full = make_cfg(**over, out_dir=str(tmp_path / "a"))
    train(full)
    run = tmp_path / "a"
    priv = json.loads((run / "privacy.json").read_text())
    assert priv["guarantee"] == "dp" and priv["epsilon"] == 2.0 and priv["delta"] == 1e-5
    assert priv["mia_posterior_bound"] == pytest.approx(0.8808, abs=5e-5) and priv["mi_nats"] is None
    assert priv["steps_done"] == 8 and priv["noise_multiplier"] > 0 and "Poisson" in priv["assumptions"]
    lines = A.read_jsonl(run / "transcript.jsonl")
    assert all(set(line) == {"step", "lr", "updates", "projected_grad"} for line in lines)
    assert not any("train_loss" in r for r in A.read_jsonl(run / "metrics.jsonl"))  # no un-noised batch statistic
    part = make_cfg(**over, out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(4)) == {"stopped_at": 4}
    train(part, resume=True)
    assert (run / "transcript.jsonl").read_text() == (tmp_path / "b" / "transcript.jsonl").read_text()
    wa, wb = weights(run), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------- fixed-size batches are secret (issue 15, 1)
def test_fixed_batches_come_from_the_secret_key_not_the_public_seed():
    """The accountant amplifies by sampling without replacement: nobody may recompute the batch from config.yaml."""
    lp, lm = [0.6] * 40, [0.5] * 40
    cfg = method_cfg(noise_multiplier=1.0, batch_size=10)
    a = make(cfg, lp, lm, steps=400)
    for t in range(400):
        a.step(t)
    batches = a.engine.batches
    assert all(len(b) == len(set(b)) == 10 and all(0 <= i < 40 for i in b) for b in batches)
    assert not any(set(b) == set(sample_batch(40, 10, 7, t)) for t, b in enumerate(batches))  # train.seed = 7
    counts = np.bincount(np.concatenate(batches), minlength=40)  # uniform: q·T = 100 batches each, sd ≈ 8.7
    assert counts.min() > 60 and counts.max() < 140
    same_key, other_key = make(cfg, lp, lm, steps=400, seed=8), make(cfg, lp, lm, steps=400, key=5)
    for t in (0, 3, 399):
        same_key.step(t)
        other_key.step(t)
    assert same_key.engine.batches == [batches[t] for t in (0, 3, 399)]  # a function of (key, t), not of train.seed
    assert other_key.engine.batches != same_key.engine.batches


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_assumptions_state_q_from_the_pool_the_adjacency_and_the_timing_residual(sampling):
    m = make(method_cfg(noise_multiplier=1.0, sampling=sampling), [0.5] * 16, [0.5] * 16, steps=50)
    text = m.summary({})["assumptions"]
    assert "public seed" not in text and "from the secret key" in text
    assert "q = B/n = 4/16 = 0.25 (n = 16 is the pool size, including any canaries)" in text
    if sampling == "fixed":
        assert "neighbouring pools differ by replacing one example" in text
        assert "one sampled-without-replacement (B = 4 of n = 16) gaussian mechanism" in text
        assert "replace-one sensitivity 2C" in text
    else:
        assert "neighbouring pools differ by adding or removing one example, sampled at the same q" in text
        assert "one Poisson-subsampled (q) gaussian mechanism" in text and "add/remove-one sensitivity C" in text
    assert "no per-step timing or traffic is released" in text and "wall_time_s" in text


def test_fixed_sampling_run_resumes_bitwise_with_secret_batches(tmp_path, make_cfg, monkeypatch, stop_after):
    import privtune.methods.dpzero as mod

    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "20240101")  # both runs draw the same secret batches and noise
    seen = []
    real = mod.pair_sums
    monkeypatch.setattr(mod, "pair_sums", lambda eng, pool, idx, *a: seen.append(list(idx)) or real(eng, pool, idx, *a))
    over = {"train.steps": 6, "train.checkpoint_every": 2, "train.log_every": 2, "task.pool_size": 32,
            "task.eval_limit": 8, "method.batch_size": 8, "method.name": "dpzero", "method.noise_multiplier": 5.0,
            "method.clip": 5.0, "method.sampling": "fixed", "method.accountant": "rdp"}
    full = make_cfg(**over, out_dir=str(tmp_path / "a"))
    train(full)
    public = [sample_batch(32, 8, full.train.seed, t) for t in range(6)]  # what config.yaml lets anyone recompute
    assert len(seen) == 6 and not any(set(b) == set(p) for b, p in zip(seen, public))
    part = make_cfg(**over, out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(3)) == {"stopped_at": 3}
    train(part, resume=True)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "transcript.jsonl").read_text() == (b / "transcript.jsonl").read_text()
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert seen[6:] == seen[:6]  # stopped and resumed, the run drew the same secret batches
    priv = json.loads((a / "privacy.json").read_text())
    assert priv["sampling"] == "fixed" and 0 < priv["epsilon"] < 10 and "public seed" not in priv["assumptions"]


def test_epsilon_spent_is_zero_then_below_then_at_the_target(tmp_path, make_cfg, monkeypatch, stop_after):
    """privacy.json's ε spent after the steps done: 0 at 0 steps, the accountant's ε(steps_done) < ε at a mid-run
    checkpoint, ≤ ε and equal to it within the calibration tolerance at the end; no `spent: 0.0` next to ε = 2."""
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    cfg = make_cfg(**{"train.steps": 8, "train.checkpoint_every": 3, "task.pool_size": 32, "task.eval_limit": 8,
                      "method.batch_size": 8, "method.name": "dpzero", "method.epsilon": 2.0, "method.clip": 5.0})
    path = Path(cfg.out_dir) / "privacy.json"
    assert train(cfg, callback=stop_after(0)) == {"stopped_at": 0}
    priv = json.loads(path.read_text())
    assert priv["steps_done"] == 0 and priv["epsilon_spent"] == 0.0 and priv["epsilon"] == 2.0
    assert "spent" not in priv and "budget" not in priv  # nats fields are PACZero's only
    train(cfg, resume=True, callback=stop_after(3))
    priv = json.loads(path.read_text())
    kw = dict(sampling_rate=8 / 32, delta=1e-5, accountant="rdp", sampling="poisson", dataset_size=32)
    assert priv["steps_done"] == 3
    assert priv["epsilon_spent"] == dp.gaussian_epsilon(priv["noise_multiplier"], steps=3, **kw)
    assert 0 < priv["epsilon_spent"] < 2.0
    train(cfg, resume=True)
    priv = json.loads(path.read_text())
    assert priv["steps_done"] == 8 and priv["epsilon"] == 2.0 and "spent" not in priv
    assert priv["epsilon_spent"] == dp.gaussian_epsilon(priv["noise_multiplier"], steps=8, **kw)
    assert 2.0 - 1e-4 < priv["epsilon_spent"] <= 2.0  # calibrated to ε ≤ 2 at relative σ precision 1e-6
