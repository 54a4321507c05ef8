"""GradOT's gradient-preserving compression score (Yao et al. 2025, arXiv 2507.04455, ACL 2025).

For a compression step δ applied to one weight W (dropping SVD component k: δ = −σ_k u_k v_kᵀ; pruning MLP
channel c: δ zeroes row c of gate/up and column c of down):

    GCS(δ) = ‖H·δ‖₁ − λ·⟨∇ℓ, δ⟩

The first term is how much δ moves the gradient (Taylor: ∇ℓ(W+δ) − ∇ℓ(W) ≈ H·δ), the second the first-order
loss increase δ causes (the emulator should be worse: privacy). Low GCS ⇒ compress. H is the K-FAC approximation
per linear layer, H·vec(δ) ≈ vec(G·δ·A), with A = E[x xᵀ] over input activations and G = E[g gᵀ] over output
gradients on a small calibration set. Both terms are normalised by their mean magnitude within the candidate set
so λ is dimensionless. Only the paper's abstract and summaries were available to us (no public code, full text not
retrieved): the formula above is the one the issue states; the normalisation, the per-block budgets and ranking
by GCS per parameter saved (emulator.py) are our choices.

For rank-one δ = s·a bᵀ the K-FAC term factorises: ‖G a bᵀ A‖₁ = |s|·‖G a‖₁·‖A b‖₁ (entrywise ℓ1 of an outer
product), so every SVD component / channel is scored without forming δ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..zo.forward import left_pad
from . import forward as FW


@dataclass
class LinearStats:
    """K-FAC factors and the loss gradient of one nn.Linear over the calibration set."""

    A: torch.Tensor  # [in, in]   E[x xᵀ] over real (non-pad) tokens
    G: torch.Tensor  # [out, out] E[g gᵀ] over real tokens, g = ∂(Σ_n ℓ_n)/∂y (per-example loss scale)
    grad: torch.Tensor  # [out, in] ∇_W of the mean calibration loss
    tokens: int = 0


@dataclass
class _Acc:
    A: torch.Tensor | None = None
    G: torch.Tensor | None = None
    na: int = 0
    ng: int = 0
    handles: list = field(default_factory=list)


def kfac_stats(model, modules: dict[str, torch.nn.Linear], ids: list[list[int]], labels: torch.Tensor,
               verb: list[int], pad_id: int = 0, micro_batch: int = 8) -> dict[str, LinearStats]:
    """One forward+backward pass over the calibration examples with hooks on `modules` (name → nn.Linear)."""
    return kfac_stats_on(model, modules, FW.Classification(ids, labels, verb, pad_id), micro_batch)


def kfac_stats_on(model, modules: dict[str, torch.nn.Linear], batch, micro_batch: int = 8) -> dict[str, LinearStats]:
    """kfac_stats for calibration examples of any task type (offsite.forward.task_examples). The hooked modules
    must see every padded position (the middle blocks do; the last block of a multiple-choice forward does not)."""
    ids = batch.ids
    acc = {name: _Acc() for name in modules}
    state = {"mask": None, "n": len(ids)}
    grads_before = {name: m.weight.requires_grad for name, m in modules.items()}

    def fwd_hook(name):
        def hook(module, inp, out):
            a = acc[name]
            keep = state["mask"].reshape(-1).bool()
            x = inp[0].detach().reshape(-1, inp[0].shape[-1])[keep]
            a.A = x.T @ x if a.A is None else a.A.add_(x.T @ x)
            a.na += x.shape[0]

            def on_grad(g):
                gg = g.detach().reshape(-1, g.shape[-1])[keep] * state["n"]  # ∂mean → ∂sum: per-example scale
                a.G = gg.T @ gg if a.G is None else a.G.add_(gg.T @ gg)
                a.ng += gg.shape[0]
            if out.requires_grad:
                out.register_hook(on_grad)
        return hook

    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in modules.items():
        m.weight.requires_grad_(True)
        m.weight.grad = None
        acc[name].handles.append(m.register_forward_hook(fwd_hook(name)))
    try:
        for chunk in FW.batches(len(ids), micro_batch):
            _, attn = left_pad([ids[j] for j in chunk], 0)  # only the mask is used: the pad id does not matter
            state["mask"] = attn
            loss = batch.loss(model, chunk) * (len(chunk) / len(ids))
            loss.backward()
        out = {}
        for name, m in modules.items():
            a = acc[name]
            out[name] = LinearStats(A=a.A / max(a.na, 1), G=a.G / max(a.ng, 1), grad=m.weight.grad.detach().clone(),
                                    tokens=a.na)
    finally:
        for name, m in modules.items():
            for h in acc[name].handles:
                h.remove()
            m.weight.grad = None
            m.weight.requires_grad_(grads_before[name])
    return out


# ------------------------------------------------------------------------------------------------- raw terms
def svd_terms(W: torch.Tensor, st: LinearStats):
    """SVD of W and, per component k (δ_k = −σ_k u_k v_kᵀ): (‖G δ_k A‖₁, ⟨∇ℓ, δ_k⟩)."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    G, A, grad = st.G.double(), st.A.double(), st.grad.double()
    hess = S * (G @ U).abs().sum(0) * (A @ Vh.T).abs().sum(0)
    lin = -S * torch.einsum("ok,oi,ki->k", U, grad, Vh)
    return U, S, Vh, hess, lin


def channel_terms(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, st_gate: LinearStats,
                  st_up: LinearStats, st_down: LinearStats):
    """Per MLP channel c (δ removes gate/up row c and down column c): (Σ‖G δ A‖₁ over the three, ⟨∇ℓ, δ⟩)."""
    g, u, d = gate.double(), up.double(), down.double()
    hess = (st_gate.G.double().abs().sum(0) * (g @ st_gate.A.double()).abs().sum(1)
            + st_up.G.double().abs().sum(0) * (u @ st_up.A.double()).abs().sum(1)
            + (st_down.G.double() @ d).abs().sum(0) * st_down.A.double().abs().sum(0))
    lin = -((st_gate.grad.double() * g).sum(1) + (st_up.grad.double() * u).sum(1)
            + (st_down.grad.double() * d).sum(0))
    return hess, lin


def gcs(hess: torch.Tensor, lin: torch.Tensor, lam: float) -> torch.Tensor:
    """GCS = ‖Hδ‖₁ − λ⟨∇ℓ, δ⟩, each term divided by its mean magnitude over the candidates scored together."""
    h = hess / hess.abs().mean().clamp_min(1e-30)
    g = lin / lin.abs().mean().clamp_min(1e-30)
    return h - float(lam) * g
