"""GradOT's GCS terms against brute force on the tiny model: the factorised K-FAC term equals ‖G·δ·A‖₁ for the
explicit δ, and the linear term ⟨∇ℓ, δ⟩ predicts the real loss change of a small δ (Taylor, first order)."""

import numpy as np
import pytest
import torch

from privtune.data import load_task
from privtune.models import load_model
from privtune.offsite import forward as FW
from privtune.offsite import gcs as GCS


@pytest.fixture(scope="module")
def setup():
    lm = load_model("tiny")
    lm.model.double()
    task = load_task("sst2")
    ids, labels = FW.encode(lm.codec, task.template, task.train[:24])
    verb = lm.codec.verbalizer_ids(task.verbalizer)
    return lm, ids, labels, verb


def _stats(setup, mods):
    lm, ids, labels, verb = setup
    return GCS.kfac_stats(lm.model, mods, ids, labels, verb, micro_batch=16)


def test_svd_terms_match_explicit_delta(setup):
    lm = setup[0]
    mod = lm.model.model.layers[1].self_attn.q_proj
    st = _stats(setup, {"q": mod})["q"]
    U, S, Vh, hess, lin = GCS.svd_terms(mod.weight.detach(), st)
    for k in range(0, len(S), 7):
        delta = -S[k] * torch.outer(U[:, k], Vh[k])
        assert torch.allclose(hess[k], (st.G.double() @ delta @ st.A.double()).abs().sum(), rtol=1e-9)
        assert torch.allclose(lin[k], (st.grad.double() * delta).sum(), rtol=1e-9, atol=1e-18)


def test_channel_terms_match_explicit_delta(setup):
    lm = setup[0]
    mlp = lm.model.model.layers[2].mlp
    st = _stats(setup, {p: getattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")})
    g, u, d = (getattr(mlp, p).weight.detach().double() for p in ("gate_proj", "up_proj", "down_proj"))
    hess, lin = GCS.channel_terms(g, u, d, st["gate_proj"], st["up_proj"], st["down_proj"])
    for c in (0, 5, 77):
        dg, du, dd = torch.zeros_like(g), torch.zeros_like(u), torch.zeros_like(d)
        dg[c], du[c], dd[:, c] = -g[c], -u[c], -d[:, c]
        h = sum((st[p].G.double() @ x @ st[p].A.double()).abs().sum()
                for p, x in (("gate_proj", dg), ("up_proj", du), ("down_proj", dd)))
        li = sum((st[p].grad.double() * x).sum() for p, x in (("gate_proj", dg), ("up_proj", du), ("down_proj", dd)))
        assert torch.allclose(hess[c], h, rtol=1e-9)
        assert torch.allclose(lin[c], li, rtol=1e-9, atol=1e-18)


def test_linear_term_predicts_real_loss_change(setup):
    """Brute force: apply t·δ_k for every SVD component of a projection and measure the loss change."""
    lm, ids, labels, verb = setup
    mod = lm.model.model.layers[1].self_attn.v_proj
    st = _stats(setup, {"v": mod})["v"]
    W0 = mod.weight.detach().clone()
    U, S, Vh, _, lin = GCS.svd_terms(W0, st)
    t = 0.02

    def loss():
        with torch.no_grad():
            return float(FW.loss(lm.model, ids, labels, verb))

    l0, actual, ks = loss(), [], list(range(0, len(S), 2))
    try:
        for k in ks:
            with torch.no_grad():
                mod.weight.copy_(W0 - t * S[k] * torch.outer(U[:, k], Vh[k]))
            actual.append(loss() - l0)
    finally:
        with torch.no_grad():
            mod.weight.copy_(W0)
    actual, predicted = np.array(actual), t * lin.numpy()[ks]
    assert np.corrcoef(actual, predicted)[0, 1] > 0.99
    assert np.abs(actual - predicted).max() < 0.05 * np.abs(actual).max()


def test_gcs_normalised_and_signed():
    hess = torch.tensor([1.0, 2.0, 3.0])
    lin = torch.tensor([0.0, 10.0, -10.0])
    s = GCS.gcs(hess, lin, lam=1.0)
    assert torch.allclose(s, hess / 2.0 - lin / (20.0 / 3.0))
    assert s[1] < s[2]  # a larger loss increase (privacy) lowers the score: compressed first
    assert torch.equal(GCS.gcs(hess, lin, lam=0.0), hess / 2.0)
