import pytest
import torch

from privtune import config as C
from privtune import methods as M
from privtune.run.loop import StopRequested


def tiny_cfg(tmp_path, **over) -> dict:
    """A config dict for a fast tiny-model run on SST-2 (real data, random model)."""
    d = {
        "model": {"name": "tiny", "device": "cpu"},
        "task": {"name": "sst2", "pool_size": 64, "eval_limit": 40},
        "trainable": {"kind": "top_layers:2"},
        "method": {"name": "mezo", "lr": 1e-3, "eps": 1e-3, "batch_size": 16},
        "train": {"steps": 12, "seed": 3, "log_every": 4, "checkpoint_every": 5, "micro_batch": 16},
        "out_dir": str(tmp_path / "run"),
    }
    for k, v in over.items():
        C.set_dotted(d, k, v)
    return d


@pytest.fixture
def make_cfg(tmp_path):
    def make(**over):
        return M.build_config(tiny_cfg(tmp_path, **over))
    return make


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def stop_after():
    """A train() callback that stops the run cleanly once n steps of this invocation are done (n = 0: before the
    first), as an interruption would: train returns {"stopped_at": step}. `then` also gets every event."""
    def make(n: int, then=None):
        done = [0]

        def callback(ev: dict) -> None:
            if then is not None:
                then(ev)
            done[0] += ev["event"] == "step"
            if ev["event"] in ("start", "step") and done[0] >= n:
                raise StopRequested()
        return callback
    return make
