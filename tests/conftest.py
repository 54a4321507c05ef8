import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from privtune import config as C
from privtune import methods as M
from privtune.errors import ConfigError, DataError
from privtune.run.loop import StopRequested, train

SECRET = "my secret row text"  # planted in bad data rows and files; must never show up in an error message


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


def tune_files(tmp_path, steps: int = 3, eval_limit: int = 20, n_val: int = 200) -> tuple[Path, Path, Path]:
    """For privtune tune: a tiny DPZero config file, a validation file of the last `n_val` rows of SST-2's train
    split, and the config's out_dir."""
    import yaml

    from privtune.paths import data_dir

    cfg = tiny_cfg(tmp_path, **{"method": {"name": "dpzero", "epsilon": 2.0, "lr": 1e-3, "eps": 1e-3,
                                           "batch_size": 16},
                                "train.steps": steps, "task.eval_limit": eval_limit, "train.checkpoint_every": 100})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = (data_dir() / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    val = tmp_path / "val.tsv"
    val.write_text("\n".join([rows[0], *rows[-n_val:]]) + "\n", encoding="utf-8")
    return path, val, Path(cfg["out_dir"])


def data_error(fn, path: Path, *args, **kwargs) -> str:
    """Call fn, expect a one-line DataError naming `path` and quoting no row text; return the message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    assert SECRET not in msg, msg
    return msg


def config_error(field: str, fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line ConfigError that starts with the config field `field` and quotes no row text."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg.startswith(field + ":"), msg
    assert "\n" not in msg and SECRET not in msg
    return msg


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


@pytest.fixture
def same_run():
    """Assert that two finished run dirs hold the same transcript and bit-identical trained tensors (a resumed run
    against an uninterrupted one)."""
    from privtune import atomic as A

    def check(a, b) -> None:
        assert (a / "transcript.jsonl").read_text() == (b / "transcript.jsonl").read_text()
        wa = A.load_tensors(a / "model" / "trainable.safetensors")
        wb = A.load_tensors(b / "model" / "trainable.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return check


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, request):
    """(tmp, ref): a folder for a module's runs, and the uninterrupted run `ref` there that its crashed or failing
    runs must end identical to, trained once per module. The module says which: its SECRET_SEED and
    reference_config(tmp) → the run's config dict. The seed and the keystore cache tmp/cache are set while it trains
    only (a test sets them again for its own runs)."""
    tmp = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVTUNE_SECRET_SEED", request.module.SECRET_SEED)
        mp.setenv("PRIVTUNE_CACHE", str(tmp / "cache"))
        torch.set_num_threads(1)
        cfg = M.build_config(request.module.reference_config(tmp))
        train(cfg)
        yield tmp, Path(cfg.out_dir)


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench(name: str):
    """benchmarks/<name>.py as a module (the scripts import each other by name, so benchmarks/ is on sys.path while
    it loads)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def frontier():
    return load_bench("frontier")


@pytest.fixture(scope="module")
def qa_table():
    return load_bench("qa_table")


@pytest.fixture(scope="module")
def qa_paired():
    return load_bench("qa_paired")


@pytest.fixture(scope="module")
def tune_qa():
    return load_bench("tune_qa")
