import itertools
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from privtune import atomic as A
from privtune import methods as M
from privtune.errors import ConfigError
from privtune.methods import paczero as P
from privtune.privacy import pac
from privtune.run.keystore import SecretKey
from privtune.run.loop import train


class FakeEngine:
    """Per-example scalars g_i chosen by the test as a function of the release history (θ depends only on it)."""

    def __init__(self, fn):
        self.fn, self.history = fn, []

    def pair_losses(self, pool, idx, seed, eps):
        g = torch.as_tensor(self.fn(tuple(self.history)), dtype=torch.float64)
        return g * eps, -g * eps  # (ℓ+ − ℓ−)/2ε = g


def make(mode="zpl", n=8, m=4, fn=None, steps=4, **kw):
    cfg = P.Config(mode=mode, subsets=m, clip=kw.pop("clip", 25.0), budget=kw.pop("budget", None), **kw)
    eng = FakeEngine(fn or (lambda h: np.ones(n)))
    meth = P.PACZero(cfg, eng, list(range(n)), run_seed=0, total_steps=steps, secret=SecretKey(1234))
    return meth, eng


def history_scalars(n, seed=0):
    """Scalars that depend on the release history; some histories give unanimous signs, some do not."""
    def fn(h):
        rng = np.random.default_rng([seed, len(h)] + [int(y > 0) for y in h])
        bias = 3.0 if (len(h) % 2 == 0) else 0.0
        return rng.normal(bias, 1.0, n)
    return fn


def test_design_puts_each_example_in_exactly_half_the_subsets():
    member = P.balanced_design(100, 16, seed=3)
    assert member.shape == (100, 16)
    assert (member.sum(axis=1) == 8).all()
    assert np.array_equal(member, P.balanced_design(100, 16, seed=3))
    assert not np.array_equal(member, P.balanced_design(100, 16, seed=4))
    assert abs(member.mean() - 0.5) < 1e-12  # membership prior ½ for every example
    halves = P.balanced_design(100, 2, seed=3)  # M = 2 (the shipped presets): two complementary subsets
    assert (halves.sum(axis=1) == 1).all() and np.array_equal(halves[:, 0], ~halves[:, 1])


def test_union_subset_means_equal_naive_per_subset():
    rng = np.random.default_rng(0)
    member = P.balanced_design(50, 8, seed=1)
    g = rng.normal(size=50)
    naive = np.array([g[member[:, m]].mean() for m in range(8)])
    assert np.allclose(P.subset_means(g, member), naive, atol=1e-12)


# M = 2 is the shipped presets' (configs/sst2_paczero_*.yaml); its scalars' seed gives both unanimous and split steps
@pytest.mark.parametrize("m, seed", [(2, 1), (4, 0)])
def test_zpl_release_distribution_identical_for_every_secret_index_exact(m, seed):
    """PACZero's I = 0 claim as an exact enumeration: for every J the law of the whole release sequence is the same."""
    n, T = 8, 5
    fn = history_scalars(n, seed)
    laws, saw_unanimous, saw_split = [], False, False
    for j in range(m):
        law = {}
        for coins in itertools.product([1, -1], repeat=T):
            meth, eng = make("zpl", n, m, fn, steps=T)
            meth._secret_index = j
            meth._coin = lambda t, k, coins=coins: coins[t]
            for t in range(T):
                rel = meth.step(t)
                saw_unanimous |= rel.public["unanimous"][0]
                saw_split |= not rel.public["unanimous"][0]
                eng.history.append(rel.public["sign"][0])
            key = tuple(eng.history)
            law[key] = law.get(key, Fraction(0)) + Fraction(1, 2 ** T)
        laws.append(law)
    assert saw_unanimous and saw_split  # both branches exercised
    assert all(law == laws[0] for law in laws)
    assert sum(laws[0].values()) == 1


def test_enumeration_detects_a_leaky_mechanism():
    """Negative control: releasing s_J on split steps makes the laws differ, so the test above can fail."""
    n, m, T = 8, 4, 5
    fn = history_scalars(n)
    laws = []
    for j in range(m):
        law = {}
        for coins in itertools.product([1, -1], repeat=T):
            meth, eng = make("zpl", n, m, fn, steps=T)
            meth._secret_index = j
            meth._coin = lambda t, k, meth=meth: int(meth._last_signs[meth._secret_index])
            real_zpl = meth._zpl

            def leaky(s, t, k, meth=meth, real=real_zpl):
                meth._last_signs = s
                return real(s, t, k)
            meth._zpl = leaky
            for t in range(T):
                eng.history.append(meth.step(t).public["sign"][0])
            key = tuple(eng.history)
            law[key] = law.get(key, Fraction(0)) + Fraction(1, 2 ** T)
        laws.append(law)
    assert any(law != laws[0] for law in laws)


@pytest.mark.parametrize("m", [2, 8])  # 2: the shipped presets' M
def test_mi_each_step_realised_mi_at_most_charged_and_total_within_budget(monkeypatch, m):
    n, T, B = 16, 30, 0.33
    seen = []
    real = pac.calibrate_sigma

    def spy(q, beta, **kw):
        sigma = real(q, beta, **kw)
        seen.append((q, beta, sigma))
        return sigma
    monkeypatch.setattr(pac, "calibrate_sigma", spy)
    meth, eng = make("mi", n, m, history_scalars(n, seed=5), steps=T, budget=B)
    total = 0.0
    for t in range(T):
        rel = meth.step(t)
        total += rel.charge
        eng.history.append(rel.public["sign"][0])
        assert rel.charge >= 0
    assert seen, "no noisy step happened"
    for q, beta, sigma in seen:
        realised = pac.binary_gaussian_mi(q, sigma)  # the certified bound: true I(S; R) ≤ this ≤ the charge
        assert realised <= beta
        assert pac.sign_release_mi(q, sigma) <= realised + 1e-12  # the released sign leaks even less
    assert total <= B + 1e-12
    assert total > 0.5 * B  # the budget is used (free unanimous steps may leave some unspent)


def test_mi_unanimous_step_is_free_and_releases_common_sign():
    meth, eng = make("mi", 8, 4, lambda h: np.full(8, 2.0), budget=0.3)
    rel = meth.step(0)
    assert rel.charge == 0 and rel.public["unanimous"] == [True] and rel.public["sign"] == [1]


def test_config_validation():
    with pytest.raises(ConfigError, match="method.subsets"):
        M.build_config({"method": {"name": "paczero", "subsets": 7}})
    with pytest.raises(ConfigError, match="method.budget"):
        M.build_config({"method": {"name": "paczero", "mode": "mi"}})
    with pytest.raises(ConfigError, match="method.clip"):
        M.build_config({"method": {"name": "paczero", "clip": -1}})


def _pac_cfg(make_cfg, tmp_path, name, mode="mi", **over):
    kw = {"method": {"name": "paczero", "mode": mode, "subsets": 8, "lr": 1e-3, "eps": 1e-2,
                     **({"budget": 0.33} if mode == "mi" else {})},
          "out_dir": str(tmp_path / name), "task.pool_size": 48, **over}
    return make_cfg(**kw)


def _floats(obj, out):
    if isinstance(obj, float):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _floats(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _floats(v, out)
    return out


def test_secret_hygiene_run_dir_and_logs_hold_no_secret(tmp_path, make_cfg, monkeypatch, capfd, caplog):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "987654321")
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    J = int(SecretKey(987654321).numpy("subset").integers(8))
    stats = []
    real = P.signs_of

    def spy(G):  # the step's subset means G_m, just before their signs are taken
        stats.append(np.array(G))
        return real(G)
    monkeypatch.setattr(P, "signs_of", spy)
    cfg = _pac_cfg(make_cfg, tmp_path, "run")
    train(cfg)
    assert len(stats) > 1, "the spy saw no subset means"
    secret_vals = set()
    for G in stats[1:]:
        secret_vals |= {float(G[J]), abs(float(G[J]))}
    run = Path(cfg.out_dir)
    numbers = []
    for f in run.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml"):
            text = f.read_text()
            assert not re.search(r"secret_index|\"J\"|subset_index", text), f
            if f.suffix == ".jsonl":
                for line in text.splitlines():
                    _floats(json.loads(line), numbers)
            if f.suffix == ".json":
                _floats(json.loads(text), numbers)
    for x in numbers:
        for v in secret_vals:
            assert not (v != 0 and abs(x - v) <= 1e-9 * abs(v)), (x, v)
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    for v in list(secret_vals)[:50]:
        assert repr(v) not in logs
    # the key and private state are gone once the run completes: J can no longer be recovered
    assert not list((tmp_path / "cache" / "secrets").glob("*.key"))
    assert not list((tmp_path / "cache" / "private").glob("*")) if (tmp_path / "cache" / "private").exists() else True
    meta = A.load_tensors(run / "model" / "trainable.safetensors")
    assert meta  # weights saved; they are a function of released signs only (replay proves it)


@pytest.mark.parametrize("mode", ["zpl", "mi"])
def test_crash_between_charge_and_update_then_resume(tmp_path, make_cfg, monkeypatch, mode):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", "42")
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    ref = _pac_cfg(make_cfg, tmp_path, "ref", mode)
    train(ref)
    cfg = _pac_cfg(make_cfg, tmp_path, "crash", mode)
    from privtune.zo import engine as E
    real = E.ZOEngine.apply_update
    calls = {"n": 0}

    class Crash(BaseException):
        pass

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # step 7: charged and written to the transcript, not yet applied
            raise Crash()
        return real(self, *a, **k)
    monkeypatch.setattr(E.ZOEngine, "apply_update", crashing)
    with pytest.raises(Crash):
        train(cfg)
    led = json.loads((Path(cfg.out_dir) / "privacy.json").read_text())
    assert led["last_charged_step"] == 7
    spent_at_crash = led["spent"]
    monkeypatch.setattr(E.ZOEngine, "apply_update", real)
    train(cfg, resume=True)
    a = json.loads((Path(ref.out_dir) / "privacy.json").read_text())
    b = json.loads((Path(cfg.out_dir) / "privacy.json").read_text())
    assert b["spent"] == a["spent"] >= spent_at_crash  # never doubled, never decreased
    assert b["directions"] == a["directions"] == 12
    wa = A.load_tensors(Path(ref.out_dir) / "model" / "trainable.safetensors")
    wb = A.load_tensors(Path(cfg.out_dir) / "model" / "trainable.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_spent_budget_refuses_to_go_on(tmp_path, make_cfg, monkeypatch, stop_after):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    cfg = _pac_cfg(make_cfg, tmp_path, "b")
    train(cfg, callback=stop_after(3))
    p = Path(cfg.out_dir) / "privacy.json"
    led = json.loads(p.read_text())
    led["spent"] = led["budget"]
    p.write_text(json.dumps(led))
    from privtune.errors import PrivtuneError
    with pytest.raises(PrivtuneError, match="budget"):
        train(cfg, resume=True)


def test_mi_near_certain_posterior_releases_exactly_and_charges_entropy():
    """When H(q₊) ≤ β_t, releasing s_J itself leaks exactly H(q₊): no noise, charge H(q₊), posterior conditioned."""
    meth, eng = make("mi", 8, 4, lambda h: np.array([3.0, 3.0, 3.0, 3.0, -3.0, -3.0, -3.0, -3.0]), budget=0.3,
                     steps=2)
    s = P.signs_of(P.subset_means(np.array([3.0] * 4 + [-3.0] * 4), meth.member))
    assert len(set(s.tolist())) == 2, "the test needs split signs"
    meth.posterior = np.where(s == s[meth._secret_index], 1.0, 1e-30)
    meth.posterior /= meth.posterior.sum()
    q = pac.q_plus(meth.posterior, s)
    rel = meth.step(0)
    assert rel.public["sign"] == [int(s[meth._secret_index])] and rel.public["sigma"] == [0.0]
    assert rel.charge == pytest.approx(pac.bernoulli_entropy(q)) and 0 < rel.charge < 0.15
    assert set(np.flatnonzero(meth.posterior > 0)) == set(np.flatnonzero(s == s[meth._secret_index]))
