"""What a user sees on stderr (issue 18, item 6): no library deprecation noise, and progress while eval scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from privtune.run.evaluate import evaluate_run
from privtune.run.loop import train
from privtune.run.setup import prepare
from privtune.zo.sums import accuracy

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # Python's default filters, as a user has them: FutureWarning is shown
    return subprocess.run([sys.executable, "-m", "privtune", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def test_lora_and_dpsgd_runs_print_no_future_warning(tmp_path):
    """DP-LoRA (peft wrapping + Opacus) trains and is evaluated without transformers' FutureWarning about
    is_gradient_checkpointing (peft reads that property on every wrap); eval shows a progress bar."""
    out = tmp_path / "run"
    r = _cli("train", "-c", "configs/tiny_dpsgd_lora.yaml", "train.steps=2", "task.eval_limit=16",
             "train.micro_batch=8", f"out_dir={out}", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FutureWarning" not in r.stderr, r.stderr[-2000:]
    r = _cli("eval", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FutureWarning" not in r.stderr, r.stderr[-2000:]
    assert json.loads(r.stdout)["total"] == 16
    assert "16/16" in r.stderr  # the tqdm bar over the scored examples


def test_eval_reports_progress_per_micro_batch(tmp_path, make_cfg):
    cfg = make_cfg(**{"train.steps": 2, "task.eval_limit": 20, "train.micro_batch": 8})
    res = train(cfg)
    events = []
    out = evaluate_run(cfg.out_dir, callback=events.append)
    score = [e for e in events if e["event"] == "score"]
    assert [(e["done"], e["total"]) for e in score] == [(8, 20), (16, 20), (20, 20)]
    assert out["accuracy"] == res["accuracy"]


def test_scoring_chunk_by_chunk_gives_the_one_pass_logits(tmp_path, make_cfg):
    """accuracy() runs one micro-batch per pass (to report between them): the logits are those of one layer-major
    pass over every chunk, bit for bit, so the accuracy is too."""
    cfg = make_cfg(**{"task.eval_limit": 30, "train.micro_batch": 8, "trainable.kind": "lora"})
    setup = prepare(cfg, need_pool=False)
    data = setup.evalset
    whole = setup.engine.logits(data)
    for chunk in setup.engine.chunks(data):
        assert torch.equal(setup.engine.logits(data, chunk), whole[chunk])
    hits = int((whole.argmax(-1) == data.labels).sum())
    events = []
    assert accuracy(setup.engine, data, callback=events.append) == (hits / 30, hits)
    assert len(events) == len(setup.engine.chunks(data)) == 4
