"""privtune.tblog: the optional TensorBoard mirror holds exactly what metrics.jsonl holds, also across a resume."""

import sys
from pathlib import Path

import pytest

from privtune import atomic as A
from privtune import tblog
from privtune.errors import ConfigError
from privtune.run import rundir as R
from privtune.run.loop import train


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(metrics: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for row in metrics:
        for tag, value in tblog.scalars(row).items():
            out.setdefault(tag, []).append((row["step"], pytest.approx(value, rel=1e-6)))  # stored as float32
    return out


def test_scalars_are_the_numbers_of_a_row():
    row = {"step": 5, "kind": "eval", "lr": 1e-3, "eval_accuracy": 0.5, "projected_grad": [0.25, -1.0],
           "updates": [[1, 0.5]], "flag": True, "name": "x"}
    assert tblog.scalars(row) == {"lr": 1e-3, "eval_accuracy": 0.5, "projected_grad/0": 0.25,
                                  "projected_grad/1": -1.0}


def test_tensorboard_mirrors_metrics_across_a_resume(tmp_path, make_cfg, stop_after):
    cfg = make_cfg(**{"train.tensorboard": True, "train.steps": 8, "train.log_every": 2, "train.checkpoint_every": 3})
    run = Path(cfg.out_dir)
    assert train(cfg, callback=stop_after(5)) == {"stopped_at": 5}
    train(cfg, resume=True)  # resumes at the step-3 checkpoint and recomputes steps 3-4: no step logged twice
    metrics = A.read_jsonl(run / R.METRICS)
    assert [m["step"] for m in metrics] == [0, 2, 4, 6, 8]
    events = read_events(run / R.TB_DIR)
    assert events == expected(metrics)
    assert {"eval_accuracy", "train_loss", "lr", "projected_grad/0"} <= set(events)


def test_off_by_default(make_cfg):
    cfg = make_cfg(**{"train.steps": 2})
    train(cfg)
    assert not (Path(cfg.out_dir) / R.TB_DIR).exists()


def test_missing_tensorboard_is_refused_before_the_run_dir(make_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    cfg = make_cfg(**{"train.tensorboard": True})
    with pytest.raises(ConfigError, match=r"^train.tensorboard: .*pip install 'privtune\[tensorboard\]'"):
        train(cfg)
    assert not Path(cfg.out_dir).exists()
