"""Multi-process training (privtune.dist): P gloo processes give the 1-process run's weights bit for bit; a killed
rank fails the job with one line and leaves rank 0's run dir resumable."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from privtune import atomic as A
from privtune import methods as M
from privtune import dist
from privtune.run import rundir as R
from privtune.run.loop import train

from conftest import tiny_cfg

SRC = str(Path(__file__).resolve().parents[1] / "src")

# One rank of a job: joins the group from torchrun's env vars and trains each config in turn in that one group.
# A job may ask rank 1 to SIGKILL itself when it reaches a step (a rank dying mid-run).
WORKER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from privtune import dist, methods as M
from privtune.errors import PrivtuneError
from privtune.methods import method_class
from privtune.run.loop import train
jobs = json.loads(sys.argv[1])
try:
    with dist.session("cpu"):
        for job in jobs:
            cfg = M.build_config(job["cfg"])
            die = job.get("die_at")
            if die is not None and dist.rank() == 1:
                cls = method_class(cfg.method.name)
                real = cls.step
                def step(self, t, real=real, die=die):
                    if t == die:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(self, t)
                cls.step = step
            train(cfg)
except PrivtuneError as e:
    if not getattr(e, "relayed", False):
        print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(tmp_path, **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**e, "PYTHONPATH": SRC, "PRIVTUNE_SECRET_SEED": "4242", "PRIVTUNE_CACHE": str(tmp_path / "cache"),
            "PRIVTUNE_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", **extra}


def launch(tmp_path, jobs: list[dict], nproc: int = 2, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """nproc ranks of WORKER (what torchrun would start), each with torchrun's environment variables."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), json.dumps(jobs)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=env(tmp_path, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(nproc)]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


def cfg_dict(tmp_path, name: str, **over) -> dict:
    base = {"task.pool_size": 48, "task.eval_limit": 24, "train.steps": 8, "train.micro_batch": 4,
            "train.checkpoint_every": 3, "train.log_every": 4, "method.batch_size": 12}
    d = tiny_cfg(tmp_path, **{**base, **over})
    d["out_dir"] = str(tmp_path / name)
    return d


METHODS = {
    "mezo": {},
    "zpl": {"method": {"name": "paczero", "mode": "zpl", "subsets": 8, "lr": 1e-3, "eps": 1e-3}},
    "mi": {"method": {"name": "paczero", "mode": "mi", "subsets": 8, "budget": 0.33, "lr": 1e-3, "eps": 1e-3}},
    "dpzero": {"method": {"name": "dpzero", "noise_multiplier": 1.0, "clip": 25.0, "sampling": "poisson",
                          "batch_size": 12, "lr": 1e-3, "eps": 1e-3}},
    "dpzo": {"method": {"name": "dpzo", "noise_multiplier": 1.0, "clip": 0.05, "sampling": "fixed",
                        "accountant": "rdp", "batch_size": 12, "lr": 1e-3, "eps": 1e-3}},
}


def method_cfg(tmp_path, name: str, tag: str) -> dict:
    d = cfg_dict(tmp_path, f"{name}-{tag}")
    if METHODS[name]:
        d["method"] = dict(METHODS[name]["method"])
    return d


def weights(run) -> dict:
    return A.load_tensors(Path(run) / "model" / "trainable.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def ledger(run) -> dict:
    return {k: v for k, v in json.loads((Path(run) / R.PRIVACY).read_text()).items() if k != "run_id"}


@contextlib.contextmanager
def one_process_env(work):
    """This test process as a 1-process run, 1 thread like each torchrun rank (CPU kernels round differently with
    different thread counts, so bit-identity is checked at equal threads per process)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVTUNE_SECRET_SEED", "4242")
        mp.setenv("PRIVTUNE_CACHE", str(work / "cache"))
        mp.delenv("WORLD_SIZE", raising=False)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def one_proc(work):
    """The 1-process runs every multi-process run is compared with."""
    with one_process_env(work):
        for m in METHODS:
            train(M.build_config(method_cfg(work, m, "p1")))
    return work


@pytest.fixture(scope="module")
def two_ranks(work):
    """One 2-rank gloo job (what torchrun starts): MeZO, PACZero-ZPL, DPZero (Poisson) and DP-ZO (fixed batches) to
    the end, then PACZero-MI with rank 1 killed at step 5."""
    jobs = [{"cfg": method_cfg(work, m, "p2")} for m in ("mezo", "zpl", "dpzero", "dpzo")]
    jobs.append({"cfg": method_cfg(work, "mi", "killed"), "die_at": 5})
    return launch(work, jobs)


# ------------------------------------------------------ one process (the fixed-order reduction: tests/zo/test_sums.py)
def test_single_process_helpers_are_the_identity():
    assert dist.world() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.shard(5) == [0, 1, 2, 3, 4]
    part = np.arange(6.0).reshape(3, 2)
    assert dist.gather_rows(part, 3) is not None and np.array_equal(dist.gather_rows(part, 3), part)
    assert dist.from_main(lambda: {"a": 1}) == {"a": 1}
    with pytest.raises(RuntimeError, match="rank 0"):
        dist.RemoteSecret().numpy("noise", 0)


# ---------------------------------------------------------------------------------------- real gloo processes
@pytest.mark.parametrize("name", ["mezo", "zpl", "dpzero", "dpzo"])
def test_two_processes_equal_one_bitwise(one_proc, two_ranks, name):
    p1, p2 = one_proc / f"{name}-p1", one_proc / f"{name}-p2"
    assert (p2 / R.EVAL).exists(), two_ranks[0].stderr[-2000:]
    assert same_weights(p1, p2)
    t1, t2 = A.read_jsonl(p1 / R.TRANSCRIPT), A.read_jsonl(p2 / R.TRANSCRIPT)
    assert t1 == t2 and len(t1) == 8  # the same releases, step by step
    assert ledger(p1) == ledger(p2)
    rows = [r for r in A.read_jsonl(p2 / R.METRICS) if r.get("kind") != "eval"]
    assert rows and all(r["processes"] == 2 for r in rows)
    if name == "mezo":
        assert all(r["comm_bytes_per_step"] > 0 for r in rows)
    else:  # a method with a secret: per-step traffic grows with secret work (a Poisson batch), so none is released
        assert not any("comm_bytes_per_step" in r or "elapsed_s" in r for r in rows)
    assert not [f for f in one_proc.iterdir() if f.name.startswith(f".{name}-p2")]  # no second writer's temp dir


def test_killed_rank_fails_cleanly_and_resumes(one_proc, two_ranks):
    r0, r1 = two_ranks
    assert r1.returncode == -9  # rank 1 was killed (SIGKILL) at step 5 of the last job
    assert r0.returncode == 2
    errors = [x for x in r0.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "dist:" in errors[0] and "--resume" in errors[0], r0.stderr[-2000:]
    assert "Traceback" not in r0.stderr
    run = one_proc / "mi-killed"
    led = ledger(run)
    assert led["last_charged_step"] == 4 and led["steps_done"] == 5
    assert [x["step"] for x in A.read_jsonl(run / R.TRANSCRIPT)] == [0, 1, 2, 3, 4]
    assert json.loads((run / R.STATE_DIR / "state.json").read_text())["step"] == 5  # θ after step 4, saved on failure
    assert not (run / R.MODEL_DIR).exists()
    # resume with one process (a different P): the uninterrupted 1-process run's weights and ledger, bit for bit
    with one_process_env(one_proc):
        train(M.build_config(method_cfg(one_proc, "mi", "killed")), resume=True)
    assert same_weights(one_proc / "mi-p1", run)
    a, b = ledger(one_proc / "mi-p1"), ledger(run)
    assert a["spent"] == b["spent"] and a["directions"] == b["directions"] == 8
    assert A.read_jsonl(one_proc / "mi-p1" / R.TRANSCRIPT) == A.read_jsonl(run / R.TRANSCRIPT)


def test_torchrun_cli_paczero_mi_equals_one_process(one_proc):
    work = one_proc
    cfg_file = work / "mi.yaml"
    cfg_file.write_text(yaml.safe_dump(method_cfg(work, "mi", "torchrun")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "privtune", "train",
           "--config", str(cfg_file), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(work), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["steps"] == 8  # rank 0 alone prints the result
    assert same_weights(work / "mi-p1", work / "mi-torchrun")
    assert ledger(work / "mi-p1") == ledger(work / "mi-torchrun")
