"""DP-SGD / DP-LoRA through Opacus: every trainable LoRA parameter gets clipped, noised per-sample gradients,
frozen parameters never move, noise 0 + no clipping is plain SGD, and a run resumes bit for bit."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from privtune.errors import ConfigError
from privtune.methods.dpsgd import DPSGD
from privtune.run.keystore import SecretKey
from privtune.run.loop import train
from privtune.run.setup import prepare

REPO = Path(__file__).resolve().parents[2]
LORA = {"trainable.kind": "lora", "trainable.lora.r": 4, "trainable.lora.alpha": 8.0, "trainable.lora.layers": 2,
        "task.pool_size": 32, "task.eval_limit": 8, "method.name": "dpsgd", "method.batch_size": 8,
        "train.micro_batch": 3}


def build(make_cfg, **over):
    cfg = make_cfg(**{**LORA, **over})
    setup = prepare(cfg, need_eval=False)
    m = DPSGD(cfg.method, setup.engine, setup.pool, cfg.train.seed, cfg.train.steps, secret=SecretKey(99))
    return cfg, setup, m


def manual_per_example_grads(setup, m, idx):
    """Per-example gradients by one autograd pass per example (no Opacus)."""
    out = []
    for i in idx:
        logits = setup.engine.forward.chunk_logits(setup.pool, [[i]])[0][0]
        loss = F.cross_entropy(logits, setup.pool.labels[[i]])
        out.append(torch.autograd.grad(loss, m.params))
    return out


def test_every_lora_parameter_gets_clipped_noised_per_sample_gradients(make_cfg):
    cfg, setup, m = build(make_cfg, **{"method.noise_multiplier": 0.7, "method.clip": 0.05,
                                       "method.sampling": "fixed"})
    names = [n for n, _ in setup.sel.params]
    assert names and all("lora_" in n for n in names)  # the trainable set is exactly the LoRA adapters
    idx = m.batch(0)
    m.per_sample_grads(idx)
    for n, p in setup.sel.params:  # Opacus saw every LoRA parameter, one gradient per example
        assert p.grad_sample is not None and p.grad_sample.shape == (len(idx), *p.shape), n
    assert sorted(m.order) == sorted(idx)
    manual = manual_per_example_grads(setup, m, m.order)
    for k, p in enumerate(m.params):  # Opacus's per-sample gradients are the true ones (chunked micro-batches)
        want = torch.stack([g[k] for g in manual])
        assert torch.allclose(p.grad_sample, want, atol=1e-6, rtol=1e-4)
    norms = torch.stack([torch.cat([g.flatten() for g in gs]).norm() for gs in manual])
    assert (norms > cfg.method.clip).all()  # C is small enough that clipping really happens
    clipped_sum = [sum(gs[k] * min(1.0, cfg.method.clip / float(nrm + 1e-6)) for gs, nrm in zip(manual, norms))
                   for k in range(len(m.params))]
    gen = SecretKey(99).torch("noise", 0)
    noise = [torch.normal(0.0, m.sigma * cfg.method.clip, p.shape, generator=gen) for p in m.params]
    rel = m.step(0)
    for k, p in enumerate(m.params):
        want = (clipped_sum[k] + noise[k]) / cfg.method.batch_size
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4), setup.sel.params[k][0]
    assert set(rel.public) == {"grad_digest"} and rel.updates == []


def test_a_step_moves_only_trainable_parameters(make_cfg):
    cfg, setup, m = build(make_cfg, **{"method.epsilon": 2.0, "method.lr": 1e-2})
    before = {n: p.detach().clone() for n, p in setup.sel.model.named_parameters()}
    trainable = {n for n, _ in setup.sel.params}
    m.apply(m.step(0), cfg.method.lr)
    after = dict(setup.sel.model.named_parameters())
    frozen = [n for n in before if n not in trainable]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in trainable)


def test_noise_zero_and_no_clipping_is_plain_sgd(make_cfg):
    over = {"method.noise_multiplier": 0.0, "method.clip": float("inf"), "method.optimizer": "sgd",
            "method.lr": 0.5, "method.sampling": "fixed"}
    cfg, setup, m = build(make_cfg, **over)
    idx = sorted(m.batch(0))
    ref = [p.detach().clone().requires_grad_(True) for p in m.params]
    grads = manual_per_example_grads(setup, m, idx)
    mean = [sum(g[k] for g in grads) / len(idx) for k in range(len(m.params))]
    m.apply(m.step(0), 0.5)
    for p, r, g in zip(m.params, ref, mean):
        assert torch.allclose(p.detach(), r.detach() - 0.5 * g, atol=1e-6, rtol=1e-5)
    assert m.guarantee == "none"


def test_opacus_accountant_agrees_with_privtune_calibration(make_cfg):
    from opacus.accountants import RDPAccountant

    cfg, setup, m = build(make_cfg, **{"method.epsilon": 3.0, "train.steps": 50})
    acc = RDPAccountant()
    for _ in range(50):
        acc.step(noise_multiplier=m.sigma, sample_rate=m.rate)
    assert acc.get_epsilon(delta=1e-5) == pytest.approx(3.0, rel=0.03)


def test_dp_lora_run_resumes_bitwise_and_refuses_replay(tmp_path, make_cfg, monkeypatch, stop_after, same_run):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "7")
    over = {**LORA, "train.steps": 6, "train.checkpoint_every": 2, "method.epsilon": 2.0, "method.lr": 1e-2}
    train(make_cfg(**over, out_dir=str(tmp_path / "a")))
    part = make_cfg(**over, out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(3)) == {"stopped_at": 3}  # mid-interval: steps 2..3 are recomputed and checked
    train(part, resume=True)
    a, b = tmp_path / "a", tmp_path / "b"
    same_run(a, b)
    priv = json.loads((a / "privacy.json").read_text())
    assert priv["method"] == "dpsgd" and priv["guarantee"] == "dp" and priv["epsilon"] == 2.0
    assert priv["mia_posterior_bound"] == pytest.approx(0.8808, abs=5e-5)
    from typer.testing import CliRunner

    from privtune.cli import app

    r = CliRunner().invoke(app, ["replay", str(a)])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: replay: a dpsgd run"), r.stderr


@pytest.mark.parametrize("over,field", [
    ({"trainable.kind": "full"}, "trainable.kind"),
    ({"method.directions": 2}, "method.directions"),
    ({"method.epsilon": 0}, "method.epsilon"),
    ({"method.delta": 1}, "method.delta"),
    ({"method.optimizer": "lion"}, "method.optimizer"),
])
def test_bad_input_names_the_field(tmp_path, monkeypatch, over, field):
    from typer.testing import CliRunner

    from privtune.cli import app

    out = tmp_path / "out"
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    args = [f"{k}={v}" for k, v in over.items()]
    r = CliRunner().invoke(app, ["train", "-c", str(REPO / "configs" / "tiny_dpsgd_lora.yaml"), f"out_dir={out}",
                                 "-q", "task.pool_size=32", "task.eval_limit=8", "method.batch_size=8", *args])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith("error: " + field), err
    assert not out.exists()


def test_config_error_is_raised_before_the_run_dir(make_cfg):
    with pytest.raises(ConfigError, match="^trainable.kind"):
        build(make_cfg, **{"trainable.kind": "full", "method.epsilon": 2.0})
