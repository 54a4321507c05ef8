"""The z backends (zo.kernels): torch is Direction.draw unchanged; triton (fused Philox z + axpy) is checked in
Triton's CPU interpreter.

The interpreter must be switched on (TRITON_INTERPRET=1) before triton is first imported, so every triton kernel
runs in one subprocess that saves what it computed; the references and assertions run here, in plain torch."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from privtune import methods as M
from privtune.cli import app
from privtune.errors import ConfigError
from privtune.run.replay import replay, verify
from privtune.zo import kernels as Z
from privtune.zo.seeds import Direction

from conftest import tiny_cfg

SEED, I, SCALE, ALPHA, DECAY = 11, 3, 0.25, -0.02, 0.995
DTYPES = ("float32", "float16", "bfloat16")

SCRIPT = r"""
import json, sys
from pathlib import Path

import torch

from privtune import config as C
from privtune import methods as M
from privtune.run.loop import StopRequested, train
from privtune.run.setup import encode_examples, prepare
from privtune.zo.seeds import Direction
from privtune.zo.kernels import TritonZ, interpreting
from privtune.zo.seeds import Direction

out, cfgs = Path(sys.argv[1]), json.loads(sys.argv[2])
assert interpreting()
torch.set_num_threads(2)
zb, res = TritonZ(), {}
SEED, I, SCALE, ALPHA, DECAY = 11, 3, 0.25, -0.02, 0.995

# (a), (b): both kernels on an odd shape (a partial last block), in each dtype
g = torch.Generator().manual_seed(0)
for dt in ("float32", "float16", "bfloat16"):
    p = torch.randn(33, 70, generator=g).to(getattr(torch, dt))
    before = p.clone()
    v = zb.perturbed(p, SEED, I, SCALE)
    q = p.clone()
    zb.axpy_(q, SEED, I, ALPHA, DECAY)
    res[dt] = {"p": before, "p_after": p, "perturbed": v, "axpy": q, "z": zb.draw(SEED, I, p)}

# (c): z as a function of (seed, i, shape)
big = torch.empty(100_000)
res["z"] = {"base": zb.draw(7, 0, big), "again": zb.draw(7, 0, big), "i1": zb.draw(7, 1, big),
            "seed8": zb.draw(8, 0, big), "block": zb.draw(7, 0, big, block=4096),
            "shape": zb.draw(7, 0, torch.empty(250, 400)), "half": zb.draw(7, 0, big.half())}

# (d) engine: θ bit-exact after perturbed passes; the hooks' value is the kernel's p + εz
setup = prepare(M.build_config(cfgs["engine"]), need_pool=False, need_eval=False)
eng = setup.engine
data = encode_examples(setup, setup.task.eval[:8])
theta = {n: p.detach().clone() for n, p in eng.params}
lp, lm = eng.pair_losses(data, None, 5, 1e-2)
lp2, lm2 = eng.pair_losses(data, None, 5, 1e-2)
res["engine"] = {"z_kernel": eng.z_kernel, "bank": len(eng._bank), "theta": theta,
                 "after": {n: p.detach().clone() for n, p in eng.params}, "lp": lp, "lm": lm, "lp2": lp2, "lm2": lm2,
                 "base": eng.losses(data)}
with torch.no_grad():
    for i, (_, p) in enumerate(eng.params):
        p.copy_(zb.perturbed(p, 5, i, 1e-2))
res["engine"]["moved"] = eng.losses(data)  # θ set to θ + εz by hand: must equal lp
with torch.no_grad():
    for n, p in eng.params:
        p.copy_(theta[n])
eng.apply_update([(5, 0.5), (6, -0.25)], 1e-2, 0.1)  # two directions, weight decay on matrices
res["engine"]["updated"] = {n: p.detach().clone() for n, p in eng.params}
res["engine"]["z"] = {n: (zb.draw(5, i, p), zb.draw(6, i, p)) for i, (n, p) in enumerate(eng.params)}

# (d) runs: one straight, one stopped after a step and resumed; replay of the straight one
train(M.build_config(cfgs["a"]))
def stop(ev):  # stop cleanly after the first step, as an interruption would
    if ev["event"] == "step":
        raise StopRequested()
assert train(M.build_config(cfgs["b"]), callback=stop) == {"stopped_at": 1}
train(M.build_config(cfgs["b"]), resume=True)
from typer.testing import CliRunner
from privtune.cli import app
r = CliRunner().invoke(app, ["replay", cfgs["a"]["out_dir"], "--verify"])
res["replay"] = (r.exit_code, r.stdout)
torch.save(res, out / "kernels.pt")
"""


def _interp_env() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    return env


@pytest.fixture(scope="module")
def interp(tmp_path_factory):
    """Run every triton kernel once, in a subprocess under Triton's interpreter; returns (work dir, results)."""
    work = tmp_path_factory.mktemp("triton")
    run = {"train.z_kernel": "triton", "trainable.kind": "top_layers:1", "train.steps": 2, "task.pool_size": 16,
           "task.eval_limit": 8, "method.batch_size": 8, "method.weight_decay": 0.1, "train.checkpoint_every": 1}
    cfgs = {"engine": tiny_cfg(work, **{**run, "out_dir": str(work / "engine")}),
            "a": tiny_cfg(work, **{**run, "out_dir": str(work / "a")}),
            "b": tiny_cfg(work, **{**run, "out_dir": str(work / "b")})}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(work), json.dumps(cfgs)], capture_output=True, text=True,
                       env=_interp_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, torch.load(work / "kernels.pt", weights_only=False)


def _ulp_close(x: torch.Tensor, ref: torch.Tensor, dtype: str) -> None:
    if dtype == "bfloat16":  # the interpreter rounds fp32 → bf16 toward zero, torch to nearest: ≤ 1 bf16 ulp apart
        torch.testing.assert_close(x.float(), ref.float(), rtol=2 ** -7, atol=0)
    else:  # float32 arithmetic then one rounding: what torch does step by step in float32
        assert torch.equal(x, ref), float((x.float() - ref.float()).abs().max())


# ----------------------------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_perturbed_is_p_plus_scale_z_and_leaves_p(interp, dtype):
    r = interp[1][dtype]
    assert r["perturbed"].dtype == r["p"].dtype == getattr(torch, dtype) and r["z"].dtype == torch.float32
    assert torch.equal(r["p_after"], r["p"])  # out of place: p bitwise unchanged
    ref = (r["p"].float() + torch.tensor(SCALE) * r["z"]).to(r["p"].dtype)
    _ulp_close(r["perturbed"], ref, dtype)
    assert not torch.equal(r["perturbed"], r["p"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy_is_decayed_p_plus_alpha_z(interp, dtype):
    r = interp[1][dtype]
    ref = (r["p"].float() * torch.tensor(DECAY) + torch.tensor(ALPHA) * r["z"]).to(r["p"].dtype)
    _ulp_close(r["axpy"], ref, dtype)
    no_decay = (r["p"].float() + torch.tensor(ALPHA) * r["z"]).to(r["p"].dtype)
    assert not torch.equal(r["axpy"], no_decay)  # the decay factor was applied


def test_z_is_a_seeded_standard_normal(interp):
    z = interp[1]["z"]
    base = z["base"].double()
    assert torch.equal(z["base"], z["again"])  # a pure function of (seed, i, shape) ...
    assert torch.equal(z["base"], z["block"])  # ... not of the kernel's block size
    assert torch.equal(z["base"], z["shape"].flatten())  # element index in row-major order
    assert torch.equal(z["base"], z["half"])  # nor of p's dtype (z is float32)
    for other in ("i1", "seed8"):  # another parameter, another seed: another, uncorrelated stream
        assert not torch.equal(z["base"], z[other])
        assert abs(float(torch.corrcoef(torch.stack([base, z[other].double()]))[0, 1])) < 0.02
    n = base.numel()
    assert abs(float(base.mean())) < 5 / math.sqrt(n)  # ≈ 0.016
    assert abs(float(base.std()) - 1) < 0.02
    assert abs(float((base.abs() < 1).double().mean()) - 0.6827) < 0.01  # normal, not a unit-variance uniform (0.577)
    assert abs(float((base.abs() < 2).double().mean()) - 0.9545) < 0.005


# ------------------------------------------------------------------------------------------------ the engine
def test_fused_engine_keeps_theta_and_perturbs_by_the_kernel(interp):
    e = interp[1]["engine"]
    assert e["z_kernel"] == "triton" and e["bank"] == 0  # no z bank: z is regenerated inside each kernel
    for n, p in e["theta"].items():
        assert torch.equal(e["after"][n], p), n  # θ bit-exact after two ± passes
    assert torch.equal(e["lp"], e["lp2"]) and torch.equal(e["lm"], e["lm2"])
    assert not torch.equal(e["lp"], e["lm"]) and not torch.equal(e["lp"].float(), e["base"])
    torch.testing.assert_close(e["lp"].float(), e["moved"], rtol=1e-6, atol=1e-6)  # hooks' θ+εz = the kernel's


def test_fused_update_is_the_engine_update(interp):
    """θ ← θ − lr·(Σ_k c_k z_k + λθ), decay on matrices only (as on the torch path), up to float32 rounding."""
    e = interp[1]["engine"]
    lr, wd = 1e-2, 0.1
    kinds = set()
    for n, p in e["theta"].items():
        z5, z6 = e["z"][n]
        decay = wd if p.ndim >= 2 else 0.0
        kinds.add(p.ndim >= 2)
        ref = p.double() - lr * (0.5 * z5.double() - 0.25 * z6.double() + decay * p.double())
        torch.testing.assert_close(e["updated"][n].double(), ref, rtol=0, atol=1e-6)
        assert (e["updated"][n] != p).any()
    assert kinds == {True, False}  # both matrices and vectors were checked


def test_triton_run_replays_and_resumes_bitwise(interp):
    work = interp[0]
    code, out = interp[1]["replay"]  # privtune replay --verify, under the interpreter
    assert code == 0 and "all 10 tensors bit-identical" in out, out
    assert json.loads((work / "a" / "engine.json").read_text())["z_kernel"] == "triton"
    from privtune import atomic as A

    a = A.load_tensors(work / "a" / "model" / "trainable.safetensors")
    b = A.load_tensors(work / "b" / "model" / "trainable.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # stopped + resumed = straight
    assert (work / "a" / "transcript.jsonl").read_text() == (work / "b" / "transcript.jsonl").read_text()


def test_replay_with_the_other_backend_does_not_reproduce(interp, tmp_path):
    """z differs between backends: a triton run replayed with torch's z gives other weights (why runs record it)."""
    run = tmp_path / "a"
    shutil.copytree(interp[0] / "a", run)
    (run / "engine.json").write_text(json.dumps({"z_kernel": "torch", "triton": None}))
    ok, msg = verify(run, replay(run))
    assert not ok and "differ" in msg


def test_replay_and_resume_refuse_without_triton(interp, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = interp[0] / "a"
    for args in (["replay", str(run), "--verify"], ["train", "--resume", f"out_dir={run}", "--quiet"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("error: train.z_kernel: the run used the 'triton' z kernel"), r.stderr


# ------------------------------------------------------------------------------- selection (no triton needed)
def test_resolve(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert Z.resolve("auto", "cpu") == "torch" and Z.resolve("torch", "cpu") == "torch"
    assert Z.resolve("torch", "cuda") == "torch"
    assert Z.resolve("auto", "cuda") == ("triton" if Z.triton_version() else "torch")  # names a device, runs nothing
    with pytest.raises(ConfigError, match=r"^train\.z_kernel: 'triton' needs a CUDA device"):
        Z.resolve("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Z.resolve("auto", "cpu") == "torch"  # auto never picks the interpreter
    assert Z.resolve("triton", "cpu") == "triton"  # tests only (triton is in the dev extra)


def test_config_error_for_triton_on_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--config", str(Path(__file__).parents[2] / "configs" / "tiny_mezo.yaml"),
                                 "train.z_kernel=triton", f"out_dir={out}", "--quiet"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: train.z_kernel: ")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ConfigError, match=r"^train\.z_kernel: "):
        M.build_config(tiny_cfg(tmp_path, **{"train.z_kernel": "cuda"}))


def test_torch_backend_is_unchanged(make_cfg, tmp_path):
    p = torch.randn(5, 7)
    zb = Z.backend("torch")
    assert not zb.fused and torch.equal(zb.draw(4, 2, p), Direction.draw(4, 2, p))
    assert torch.equal(zb.perturbed(p, 4, 2, 0.5), p + 0.5 * Direction.draw(4, 2, p))
    q = p.clone()
    zb.axpy_(q, 4, 2, -0.1, 0.9)
    torch.testing.assert_close(q, p * 0.9 - 0.1 * Direction.draw(4, 2, p))
    from privtune.run.loop import train

    cfg = make_cfg(**{"train.steps": 2})
    assert cfg.train.z_kernel == "auto"
    train(cfg)
    assert json.loads((Path(cfg.out_dir) / "engine.json").read_text()) == {"z_kernel": "torch", "triton": None}
