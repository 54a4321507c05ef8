"""BBoxER (arXiv 2507.01752): comparison-only search, bit-level replay, generalization-bound privacy.json."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privtune import atomic as A
from privtune import config as C
from privtune.errors import ConfigError
from privtune.methods import bboxer
from privtune.privacy.generalization import generalization_gap_bound, ranking_bits
from privtune.run import replay as RP
from privtune.run.loop import train
from privtune.run.setup import build_model, prepare
from privtune.trainable import trainable_state

REPO = Path(__file__).resolve().parents[2]
FAST = {"trainable.kind": "final_norm", "method": {"name": "bboxer", "sigma": 0.2}, "train.steps": 12,
        "task.pool_size": 48, "task.eval_limit": 24,
        "train.micro_batch": 64}


def cfg_for(make_cfg, **over):
    return make_cfg(**copy.deepcopy({**FAST, **over}))  # set_dotted writes into nested dicts


def spy_tell(monkeypatch):
    """Record every value handed to the nevergrad optimizer's tell()."""
    told = []
    make = bboxer.make_optimizer

    def wrapped(*a, **k):
        opt = make(*a, **k)
        tell = opt.tell

        def spy(candidate, loss, *rest, **kw):
            told.append(loss)
            return tell(candidate, loss, *rest, **kw)
        opt.tell = spy
        return opt
    monkeypatch.setattr(bboxer, "make_optimizer", wrapped)
    return told


def values_from_bits(bits):
    """What the incumbent wrapper must tell, computed from the transcript bits alone."""
    value, out = 0.0, []
    for b in bits:
        if b:
            value -= 1.0
            out.append(value)
        else:
            out.append(value + 1.0)
    return out


def test_tell_receives_only_values_computed_from_the_released_bits(tmp_path, make_cfg, monkeypatch):
    told = spy_tell(monkeypatch)
    cfg = cfg_for(make_cfg, out_dir=str(tmp_path / "a"))
    train(cfg)
    lines = A.read_jsonl(tmp_path / "a" / "transcript.jsonl")
    assert all(set(x) == {"step", "lr", "updates", "bit"} and x["updates"] == [] for x in lines)
    bits = [x["bit"] for x in lines]
    assert told == values_from_bits(bits) and 0 < sum(bits) < len(bits)

    # a strictly increasing transform of the private score changes no comparison, hence nothing the optimizer sees
    told.clear()
    score = bboxer.Scorer._score
    monkeypatch.setattr(bboxer.Scorer, "_score", lambda self, x: 1e3 * score(self, x) + 7.0)
    train(cfg_for(make_cfg, out_dir=str(tmp_path / "b")))
    assert told == values_from_bits(bits)
    assert (tmp_path / "b" / "transcript.jsonl").read_text() == (tmp_path / "a" / "transcript.jsonl").read_text()


def test_ranking_tells_ranks_and_releases_a_permutation(tmp_path, make_cfg, monkeypatch):
    told = spy_tell(monkeypatch)
    cfg = cfg_for(make_cfg, **{"method.optimizer": "diagonal_cma", "method.comparison": "ranking",
                               "method.population": 4, "train.steps": 5}, out_dir=str(tmp_path / "r"))
    train(cfg)
    lines = A.read_jsonl(tmp_path / "r" / "transcript.jsonl")
    assert all(sorted(x["ranking"]) == [0, 1, 2, 3] for x in lines)
    assert told == [0.0, 1.0, 2.0, 3.0] * 5  # the rank positions, in ranking order
    priv = json.loads((tmp_path / "r" / "privacy.json").read_text())
    assert priv["bits_released"] == pytest.approx(5 * ranking_bits(4))


@pytest.mark.parametrize("over", [
    {},
    {"method.optimizer": "diagonal_cma"},
    {"method.optimizer": "de", "method.score": "error"},
    {"method.optimizer": "cma", "method.comparison": "ranking", "method.population": 3, "train.steps": 4},
    {"method.optimizer": "random", "method.granularity": "tensor"},
])
def test_replay_from_seed_and_bits_is_bit_identical(tmp_path, make_cfg, over):
    cfg = cfg_for(make_cfg, **over, out_dir=str(tmp_path / "run"))
    train(cfg)
    ok, msg = RP.verify(tmp_path / "run", RP.replay(tmp_path / "run"))
    assert ok, msg
    base = trainable_state(build_model(cfg)[1])
    saved = A.load_tensors(tmp_path / "run" / "model" / "trainable.safetensors")
    moved = any(not torch.equal(saved[k], base[k]) for k in base)
    bits = [x.get("bit", 1) for x in A.read_jsonl(tmp_path / "run" / "transcript.jsonl")]
    assert moved == any(bits)


def test_replay_with_changed_bits_gives_another_model(tmp_path, make_cfg):
    train(cfg_for(make_cfg, out_dir=str(tmp_path / "run")))
    path = tmp_path / "run" / "transcript.jsonl"
    lines = A.read_jsonl(path)
    first_win = next(i for i, x in enumerate(lines) if x["bit"])
    lines[first_win]["bit"] = 0
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ok, _ = RP.verify(tmp_path / "run", RP.replay(tmp_path / "run"))
    assert not ok


def test_resume_is_bitwise_identical_to_uninterrupted(tmp_path, make_cfg, stop_after):
    train(cfg_for(make_cfg, out_dir=str(tmp_path / "a")))
    part = cfg_for(make_cfg, out_dir=str(tmp_path / "b"))
    assert train(part, callback=stop_after(7)) == {"stopped_at": 7}
    train(part, resume=True)
    a, b = (A.load_tensors(tmp_path / d / "model" / "trainable.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "transcript.jsonl").read_text() == (tmp_path / "b" / "transcript.jsonl").read_text()


def test_zero_bits_is_the_base_model(make_cfg, tmp_path):
    cfg = cfg_for(make_cfg, out_dir=str(tmp_path / "z"))
    setup = prepare(cfg, need_pool=False, need_eval=False)
    base = trainable_state(setup.sel)
    bboxer.BBoxER.replay(cfg, setup, [])  # b = 0: no bit released
    assert all(torch.equal(base[k], v) for k, v in trainable_state(setup.sel).items())
    m = bboxer.BBoxER(cfg.method, setup.engine, None, 0, 5)
    m.write(np.full(m.dim, 0.3))
    m.write(np.zeros(m.dim))  # x = 0 is w0 exactly, whatever came before
    assert all(torch.equal(base[k], v) for k, v in trainable_state(setup.sel).items())


def test_privacy_json_reports_the_bound_and_the_observed_gap(tmp_path, make_cfg):
    cfg = cfg_for(make_cfg, out_dir=str(tmp_path / "run"))
    result = train(cfg)
    priv = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert priv["guarantee"] == "generalization bound" and priv["epsilon"] is None
    assert "NOT differential privacy" in priv["assumptions"]
    assert priv["bits_released"] == 12 and priv["scoring_examples"] == 48
    assert priv["generalization_bound"] == pytest.approx(generalization_gap_bound(12, 48, 0.05))
    assert priv["mi_nats"] == pytest.approx(12 * np.log(2)) and priv["mia_posterior_bound"] == 1.0
    assert priv["eval_accuracy"] == result["accuracy"]
    assert priv["observed_gap"] == pytest.approx(priv["scoring_accuracy"] - result["accuracy"])


@pytest.mark.parametrize("over,field", [
    ({"method.population": 4}, "method.population"),
    ({"method.comparison": "ranking", "method.population": 1}, "method.population"),
    ({"method.optimizer": "adam"}, "method.optimizer"),
    ({"method.sigma": 0.0}, "method.sigma"),
    ({"method.delta": 1.0}, "method.delta"),
    ({"method.score": "f1"}, "method.score"),
])
def test_bad_config_names_the_field(make_cfg, over, field):
    with pytest.raises(ConfigError) as e:
        cfg_for(make_cfg, **over)
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_lora_is_refused_without_leaving_a_run_dir(tmp_path, make_cfg):
    cfg = cfg_for(make_cfg, **{"trainable.kind": "lora"}, out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^trainable\.kind:"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_bad_value_exits_2_naming_the_field(tmp_path):
    p = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", str(REPO / "configs" / "tiny_bboxer.yaml"),
                        f"out_dir={tmp_path / 'run'}", "method.comparison=ranking", "method.population=1"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: method.population:")
    assert not (tmp_path / "run").exists()
