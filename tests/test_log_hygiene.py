"""Log hygiene: a run leaks no training text, no per-example loss and no secret into anything it writes or prints.

Each training text carries a canary string. MeZO and PACZero-MI train on them through the CLI (stdout, stderr, and
the library's log records at DEBUG on stderr) and through the library (logs captured at DEBUG, stdout/stderr,
callback events). `ZOEngine.pair_losses` is wrapped to record every per-example loss. Then every output and every
file of the run dir (metrics, transcript, privacy.json, config.yaml, eval.json, state/*, model/* with the
safetensors headers) is scanned: no canary, no float within 1e-9 (relative) of a recorded loss, no field that names
PACZero's secret index J, no secret noise draw, no key; and the keystore holds nothing once the run is done.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from privtune import methods as M
from privtune.run.keystore import SecretKey
from privtune.run.loop import train
from privtune.zo import engine as E

REPO = Path(__file__).resolve().parents[1]
CANARY = "zqxcanary"
SECRET_SEED = 918273645
STEPS, SUBSETS = 12, 8
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
SECRET_FIELDS = re.compile(r"secret|^j$|subset_index|^subset$|key", re.IGNORECASE)

# The CLI under a wrapper that records per-example losses (one JSON line per pair_losses call) and turns the
# library's logging up to DEBUG on stderr before privtune's main() configures it.
WRAPPER = """
import json, logging, sys
from privtune.zo import engine as E
record = open(sys.argv.pop(1), "a")
real = E.ZOEngine.pair_losses
def spy(self, *a, **k):
    lp, lm = real(self, *a, **k)
    record.write(json.dumps(lp.tolist() + lm.tolist()) + "\\n"); record.flush()
    return lp, lm
E.ZOEngine.pair_losses = spy
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from privtune.cli import main
sys.argv[0] = "privtune"
main()
"""


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def write_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    train_rows = [f"{CANARY}{i:03d} the film was {words[i % 6]} said {CANARY}tail{i}\t{i % 2}" for i in range(48)]
    eval_rows = [f"{CANARY}eval{i:03d} a {words[(i + 1) % 6]} one\t{i % 2}" for i in range(16)]
    tr, ev = folder / "train.tsv", folder / "dev.tsv"
    tr.write_text("text\tlabel\n" + "\n".join(train_rows) + "\n")
    ev.write_text("text\tlabel\n" + "\n".join(eval_rows) + "\n")
    return tr, ev


def overrides(tr: Path, ev: Path, method: str) -> dict:
    over = {"task.name": "custom", "task.train_path": str(tr), "task.eval_path": str(ev), "task.eval_limit": 16,
            "task.template": "Review: {text}\nSentiment:", "task.verbalizer": [" negative", " positive"],
            "task.pool_size": 32, "train.steps": STEPS, "train.log_every": 2, "train.eval_every": 4,
            "train.checkpoint_every": 5, "train.micro_batch": 32, "model.device": "cpu"}
    if method == "mezo":
        over.update({"method.batch_size": 8})
    else:
        over.update({"method.subsets": SUBSETS, "method.budget": 0.2})
    return over


def config_dict(method: str, tr: Path, ev: Path, out: Path) -> dict:
    """configs/tiny_<method>.yaml with the test's overrides applied."""
    name = "tiny_mezo.yaml" if method == "mezo" else "tiny_paczero_mi.yaml"
    d = yaml.safe_load((REPO / "configs" / name).read_text())
    for k, v in {**overrides(tr, ev, method), "out_dir": str(out)}.items():
        node = d
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return d


# -------------------------------------------------------------------------------------------------- scanning
def floats_in(obj, out: list) -> list:
    if isinstance(obj, float):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            floats_in(v, out)
    elif isinstance(obj, list):
        for v in obj:
            floats_in(v, out)
    return out


def keys_in(obj, out: list) -> list:
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(str(k))
            keys_in(v, out)
    elif isinstance(obj, list):
        for v in obj:
            keys_in(v, out)
    return out


def scan_run_dir(run: Path) -> tuple[list[float], list[str], list[str]]:
    """(floats of every structured file, every field name, every text) of a run dir; asserts no canary bytes."""
    floats, keys, texts = [], [], []
    files = sorted(p for p in run.rglob("*") if p.is_file())
    names = {str(p.relative_to(run)) for p in files}
    for expected in ("config.yaml", "metrics.jsonl", "transcript.jsonl", "privacy.json", "eval.json",
                     "state/state.json", "model/trainable.safetensors", "model/manifest.json"):
        assert expected in names, (expected, names)
    for f in files:
        raw = f.read_bytes()
        assert CANARY.encode() not in raw, f"training text in {f}"
        if f.suffix == ".safetensors":
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8: 8 + n])
            objs = [header]
            assert set(header.get("__metadata__", {})) <= {"format"}, header.get("__metadata__")
        elif f.suffix == ".json":
            objs = [json.loads(raw)]
        elif f.suffix == ".jsonl":
            objs = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        elif f.suffix == ".yaml":
            objs = [yaml.safe_load(raw)]
        else:
            objs = []
            texts.append(raw.decode("utf-8", "replace"))
        for o in objs:
            floats_in(o, floats)
            keys_in(o, keys)
            texts.append(json.dumps(o))
    return floats, keys, texts


def numbers_in_text(text: str) -> list[float]:
    return [float(m) for m in NUMBER.findall(text)]


def matches(values, secrets: np.ndarray, rel: float = 1e-9) -> list[tuple[float, float]]:
    """Pairs (value, secret) with |value − secret| ≤ rel·|secret| (secrets sorted)."""
    hits = []
    for v in values:
        if not np.isfinite(v):
            continue
        i = np.searchsorted(secrets, v)
        for j in (i - 1, i):
            if 0 <= j < len(secrets) and abs(v - secrets[j]) <= rel * abs(secrets[j]) and secrets[j] != 0:
                hits.append((v, float(secrets[j])))
    return hits


def secret_values(method: str) -> tuple[int, np.ndarray]:
    """PACZero's J and its unit noise draws (one per step, K = 1) for SECRET_SEED."""
    key = SecretKey(SECRET_SEED)
    j = int(key.numpy("subset").integers(SUBSETS))
    noise = np.array([key.numpy("noise", t).standard_normal() for t in range(STEPS)])
    return j, np.sort(noise)


def check_outputs(method: str, run: Path, texts_out: list[str], losses: list[float], cache: Path) -> None:
    assert len(losses) > 50, "pair_losses was not recorded"
    lossarr = np.sort(np.asarray(losses, dtype=np.float64))
    assert matches([float(lossarr[3])], lossarr), "the matcher itself must find a leaked loss"
    floats, keys, texts = scan_run_dir(run)
    for t in texts_out:
        assert CANARY not in t, f"training text printed or logged: ...{t[t.find(CANARY) - 80: t.find(CANARY) + 40]}"
        floats += numbers_in_text(t)
    for t in texts:
        floats += numbers_in_text(t)
    assert not matches(floats, lossarr), "a per-example loss appears in the outputs"
    assert str(SECRET_SEED) not in "".join(texts + texts_out)
    if method == "paczero":
        j, noise = secret_values(method)
        bad = [k for k in keys if SECRET_FIELDS.search(k) and k != "secret_source"]  # "key" | "fixed": no secret
        assert not bad, f"fields that may hold the secret subset index J={j}: {bad}"
        assert not matches(floats, noise), "a secret noise draw appears in the outputs"
        led = json.loads((run / "privacy.json").read_text())
        assert led["secret_source"] == "fixed"  # where the secret came from, never the secret
        assert led["spent"] > 0 and led["noisy_releases"] > 0  # the secret was really used
    leftovers = [p for sub in ("secrets", "private") if (cache / sub).exists() for p in (cache / sub).iterdir()]
    assert not leftovers, f"keystore / private state not deleted: {leftovers}"


# ------------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """MeZO and PACZero-MI through the CLI, in parallel, without -q (progress output included)."""
    tmp = tmp_path_factory.mktemp("hygiene_cli")
    tr, ev = write_data(tmp / "data")
    procs = {}
    for method in ("mezo", "paczero"):
        d = tmp / method
        d.mkdir()
        cfg = d / "config.yaml"
        cfg.write_text(yaml.safe_dump(config_dict(method, tr, ev, d / "run")))
        env = dict(os.environ, PRIVTUNE_SECRET_SEED=str(SECRET_SEED), PRIVTUNE_CACHE=str(d / "cache"),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", WRAPPER, str(d / "losses.jsonl"), "train", "-c", str(cfg)]
        procs[method] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True), d)
    out = {}
    for method, (p, d) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        losses = [x for line in (d / "losses.jsonl").read_text().splitlines() for x in json.loads(line)]
        out[method] = (stdout, stderr, losses, d)
    return out


@pytest.mark.parametrize("method", ["mezo", "paczero"])
def test_cli_run_leaks_nothing(cli_runs, method):
    stdout, stderr, losses, d = cli_runs[method]
    assert "accuracy" in stdout and "encoding" in stderr  # the outputs are really there
    check_outputs(method, d / "run", [stdout, stderr], losses, d / "cache")


@pytest.mark.parametrize("method", ["mezo", "paczero"])
def test_library_run_leaks_nothing(tmp_path, monkeypatch, capfd, caplog, method):
    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", str(SECRET_SEED))
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    losses, events = [], []
    real = E.ZOEngine.pair_losses

    def spy(self, *a, **k):
        lp, lm = real(self, *a, **k)
        losses.extend(lp.tolist() + lm.tolist())
        return lp, lm

    monkeypatch.setattr(E.ZOEngine, "pair_losses", spy)
    tr, ev = write_data(tmp_path / "data")
    result = train(M.build_config(config_dict(method, tr, ev, tmp_path / "run")), callback=events.append)
    out, err = capfd.readouterr()
    logged = caplog.text + "".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    texts = [out, err, logged, json.dumps(events), json.dumps(result)]
    check_outputs(method, tmp_path / "run", texts, losses, tmp_path / "cache")
