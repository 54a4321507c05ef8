"""DP-ZO (arXiv 2401.04343, Alg. 1): clipped loss differences, a privatized sum (Gaussian or Laplace), the run."""

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
from privtune.methods.dpzo import DPZO
from privtune.privacy import dp
from privtune.privacy.bounds import eps_to_posterior
from privtune.run.keystore import SecretKey
from privtune.run.loop import train

REPO = Path(__file__).resolve().parents[2]


class FakeEngine:
    def __init__(self, lp, lm):
        self.lp = torch.tensor(lp, dtype=torch.float64)
        self.lm = torch.tensor(lm, dtype=torch.float64)
        self.batches = []

    def pair_losses(self, pool, idx, seed, eps):
        self.batches.append(list(idx))
        return self.lp[list(idx)], self.lm[list(idx)]


def method_cfg(**kw):
    base = {"name": "dpzo", "noise_multiplier": 0.0, "clip": 0.01, "batch_size": 4, "eps": 1e-3,
            "sampling": "fixed", "accountant": "rdp"}
    return M.build_config({"method": {**base, **kw}}).method


def make(cfg, lp, lm, steps=100, key=1234, seed=7):
    return DPZO(cfg, FakeEngine(lp, lm), list(range(len(lp))), seed, steps, secret=SecretKey(key))


def test_noise_free_release_clips_the_loss_difference_and_sums():
    lp = [0.5020, 0.5000, 0.4990, 0.5300, 0.4000, 0.5001, 0.5000, 0.6000]
    lm = [0.5000, 0.5010, 0.4990, 0.5000, 0.5000, 0.5000, 0.5004, 0.5000]
    m = make(method_cfg(clip=0.01), lp, lm)
    for t in range(5):
        rel = m.step(t)
        idx = sample_batch(8, 4, 7, t)
        total = sum(min(max(lp[i] - lm[i], -0.01), 0.01) for i in idx)  # C bounds Δ_i = ℓ⁺ − ℓ⁻ itself
        assert rel.public["noisy_sum"] == [pytest.approx(total, abs=1e-15)]
        assert rel.public["projected_grad"] == [pytest.approx(total / (2e-3 * 4), abs=1e-12)]
        assert rel.updates[0][1] == rel.public["projected_grad"][0]
        assert set(rel.public) == {"noisy_sum", "projected_grad"}


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_noise_on_the_sum_has_the_calibrated_scale(mechanism):
    x, C_, B, eps, T = 1.3, 0.02, 8, 1e-3, 4000  # B = N: the RDP accountant has a Laplace rule for the full batch
    lp, lm = [1.0] * 8, [0.0] * 8  # every Δ_i = 1, clipped to C: the noise-free sum is B·C
    cfg = method_cfg(mechanism=mechanism, noise_multiplier=x, clip=C_, batch_size=B, eps=eps)
    m = make(cfg, lp, lm, steps=T)
    rels = [m.step(t).public for t in range(T)]
    noise = np.array([r["noisy_sum"][0] - B * C_ for r in rels])
    if mechanism == "gaussian":
        assert np.std(noise) == pytest.approx(x * C_, rel=0.04)
    else:
        assert np.mean(np.abs(noise)) == pytest.approx(x * C_, rel=0.04)  # Laplace(b): E|X| = b
        assert np.std(noise) == pytest.approx(math.sqrt(2) * x * C_, rel=0.06)
    grads = np.array([r["projected_grad"][0] for r in rels])
    assert np.std(grads) == pytest.approx(m.noise_std, rel=0.06)
    assert m.noise_std == pytest.approx((1 if mechanism == "gaussian" else math.sqrt(2)) * x * C_ / (2 * eps * B))


def test_laplace_scale_is_calibrated_by_the_accountant():
    cfg = method_cfg(mechanism="laplace", noise_multiplier=None, epsilon=2.0, accountant="pld", sampling="poisson")
    m = make(cfg, [0.5] * 32, [0.5] * 32, steps=40)
    assert m.sigma == pytest.approx(dp.laplace_scale_for_epsilon(2.0, 1e-5, 40, 4 / 32, "pld", "poisson"), rel=1e-4)
    s = m.summary({})
    assert s["guarantee"] == "dp" and s["epsilon"] == 2.0
    assert s["mia_posterior_bound"] == pytest.approx(eps_to_posterior(2.0, 1e-5))
    assert "laplace" in s["assumptions"] and "PLD" in s["assumptions"] and "loss difference" in s["assumptions"]
    assert m.ledger_fields()["mechanism"] == "laplace"


@pytest.mark.parametrize("over,field", [
    ({"mechanism": "exponential"}, "method.mechanism"),
    ({"epsilon": 0.0, "noise_multiplier": None}, "method.epsilon"),
    ({"delta": 1.0}, "method.delta"),
    ({"delta": 0.0}, "method.delta"),
    ({"clip": 0.0}, "method.clip"),
])
def test_bad_config_names_the_field(over, field):
    with pytest.raises(ConfigError) as e:
        method_cfg(**over)
    assert str(e.value).startswith(field + ":"), str(e.value)


@pytest.mark.parametrize("accountant,sampling", [("rdp", "poisson"), ("pld", "fixed")])
def test_laplace_without_an_accountant_rule_names_the_field(accountant, sampling):
    cfg = method_cfg(mechanism="laplace", noise_multiplier=None, epsilon=2.0, accountant=accountant,
                     sampling=sampling)
    with pytest.raises(ConfigError) as e:
        make(cfg, [0.5] * 16, [0.5] * 16, steps=10)
    assert str(e.value).startswith("method.accountant:"), str(e.value)


def test_tiny_laplace_run_writes_dp_privacy_json(tmp_path, make_cfg):
    cfg = M.load_config(REPO / "configs" / "tiny_dpzo.yaml", [f"out_dir={tmp_path / 'run'}", "train.steps=6",
                                                       "task.pool_size=32", "task.eval_limit=16",
                                                       "method.batch_size=8"])
    assert cfg.method.mechanism == "laplace"
    train(cfg)
    run = tmp_path / "run"
    priv = json.loads((run / "privacy.json").read_text())
    assert priv["guarantee"] == "dp" and priv["mechanism"] == "laplace" and priv["epsilon"] == 2.0
    assert priv["mia_posterior_bound"] == pytest.approx(0.8808, abs=5e-5) and priv["mi_nats"] is None
    lines = A.read_jsonl(run / "transcript.jsonl")
    assert len(lines) == 6 and all(set(x) == {"step", "lr", "updates", "noisy_sum", "projected_grad"} for x in lines)
