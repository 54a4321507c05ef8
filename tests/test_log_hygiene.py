"""Log hygiene: a run leaks no training text, no per-example loss and no secret into anything it writes or prints.

Each training text carries a canary string. MeZO and PACZero-MI train on them through the CLI (stdout, stderr, and
the library's log records at DEBUG on stderr) and through the library (logs captured at DEBUG, stdout/stderr,
callback events). `ZOEngine.pair_losses` is wrapped to record every per-example loss. Then every output and every
file of the run dir (metrics, transcript, privacy.json, config.yaml, eval.json, state/*, model/* with the
safetensors headers) is scanned: no canary, no float within 1e-9 (relative) of a recorded loss, no field that names
PACZero's secret index J, no secret noise draw, no key; and the keystore holds nothing once the run is done.

QA cases (issue #20): a generation task (MeZO) and a multiple-choice task (PACZero-MI) whose questions, contexts,
answers and choices all carry the canary string, trained with QA canaries and then audited (`privtune audit`, and
`audit_run` in the library), with `ZOEngine.losses` (the audit's per-example losses, both signs) recorded as well.
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


def run_cli(tmp: Path, wrapper: str, jobs: dict[str, tuple[dict, list[str]]]) -> dict:
    """Each job `name: (config, after)` runs `privtune train -c <config>` (then the commands in `after`) under
    `wrapper`, which records the per-example losses, in the folder tmp/name with its own keystore cache; the jobs
    run in parallel. Returns name: (stdout, stderr, recorded losses, folder)."""
    procs = {}
    for name, (config, after) in jobs.items():
        d = tmp / name
        d.mkdir()
        cfg = d / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        env = dict(os.environ, PRIVTUNE_SECRET_SEED=str(SECRET_SEED), PRIVTUNE_CACHE=str(d / "cache"),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", wrapper, str(d / "losses.jsonl"), "train", "-c", str(cfg), *after]
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), d)
    out = {}
    for name, (p, d) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        losses = [x for line in (d / "losses.jsonl").read_text().splitlines() for x in json.loads(line)]
        out[name] = (stdout, stderr, losses, d)
    return out


# ------------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """MeZO and PACZero-MI through the CLI, in parallel, without -q (progress output included)."""
    tmp = tmp_path_factory.mktemp("hygiene_cli")
    tr, ev = write_data(tmp / "data")
    return run_cli(tmp, WRAPPER, {m: (config_dict(m, tr, ev, tmp / m / "run"), []) for m in ("mezo", "paczero")})


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


# ------------------------------------------------------------------------------------- QA tasks (issue #20)
QA_KINDS = {"generation": "mezo", "multiple_choice": "paczero"}  # one ZO method per type, both checkers exercised
QA_TEMPLATES = {"generation": "Context: {context}\nQuestion: {question}\nAnswer:",
                "multiple_choice": "Question: {question}\nAnswer:"}
# The CLI wrapper, also recording ZOEngine.losses (the audit's per-example losses and the loss attack's −loss), and
# running two commands, `train ... :: audit ...`, in one process: the tiny run costs less than importing the stack.
WRAPPER_QA = WRAPPER.replace("logging.basicConfig", """real_losses = E.ZOEngine.losses
def spy_losses(self, *a, **k):
    out = real_losses(self, *a, **k)
    record.write(json.dumps(out.tolist() + (-out).tolist()) + "\\n"); record.flush()
    return out
E.ZOEngine.losses = spy_losses
logging.basicConfig""", 1).replace("""sys.argv[0] = "privtune"
main()
""", """args = sys.argv[1:]
for command in (args[:args.index("::")], args[args.index("::") + 1:]):
    sys.argv = ["privtune", *command]
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
""")


def write_qa_data(folder: Path, kind: str) -> tuple[Path, Path]:
    """Every text a row holds (question, context, answers, choices) carries the canary string."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = []
    for i in range(64):
        q = f"{CANARY}q{i:03d} what was the film {words[i % 6]} about {CANARY}qtail{i}"
        if kind == "generation":
            rows.append({"question": q, "context": f"{CANARY}ctx{i} the film was {words[(i + 2) % 6]}",
                         "answers": [f"{CANARY}ans{i} {words[i % 6]}", f"{CANARY}alt{i}"]})
        else:
            rows.append({"question": q, "choices": [f"{CANARY}choice{i}x{j} {words[(i + j) % 6]}" for j in range(4)],
                         "label": i % 4})
    tr, ev = folder / f"{kind}_train.jsonl", folder / f"{kind}_dev.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows[48:]))
    return tr, ev


def qa_config_dict(kind: str, tr: Path, ev: Path, out: Path) -> dict:
    """configs/tiny_<method>.yaml on a custom QA task, with QA canaries for the audit."""
    method = QA_KINDS[kind]
    d = config_dict(method, tr, ev, out)
    task = d["task"]
    for key in ("verbalizer", "label_names"):
        task.pop(key, None)
    task.update({"type": kind, "template": QA_TEMPLATES[kind], "text_column": "question", "canaries": 8,
                 "max_new_tokens": 4, "pool_size": 24})
    return d


def check_qa_outputs(kind: str, run: Path, texts_out: list[str], losses: list[float], cache: Path) -> None:
    check_outputs(QA_KINDS[kind], run, texts_out, losses, cache)
    res = json.loads((run / "audit.json").read_text())
    assert "canary" in res and res["canary"]["canaries"] == 8  # the audit really ran, canaries included


@pytest.fixture(scope="module")
def cli_qa_runs(tmp_path_factory):
    """A generation and a multiple-choice run through the CLI, in parallel, each followed by `privtune audit`."""
    tmp = tmp_path_factory.mktemp("hygiene_cli_qa")
    jobs = {}
    for kind in QA_KINDS:
        tr, ev = write_qa_data(tmp / "data", kind)
        run = tmp / kind / "run"
        jobs[kind] = (qa_config_dict(kind, tr, ev, run), ["::", "audit", str(run), "--bootstrap", "20"])
    return run_cli(tmp, WRAPPER_QA, jobs)


@pytest.mark.parametrize("kind", list(QA_KINDS))
def test_cli_qa_run_and_audit_leak_nothing(cli_qa_runs, kind):
    stdout, stderr, losses, d = cli_qa_runs[kind]
    texts = [stdout, stderr]
    assert "encoding" in stderr and "canaries: 8" in stdout and "audit.json" in stdout  # the outputs are there
    assert ("f1" if kind == "generation" else "accuracy") in stdout
    check_qa_outputs(kind, d / "run", texts, losses, d / "cache")


@pytest.mark.parametrize("kind", list(QA_KINDS))
def test_library_qa_run_and_audit_leak_nothing(tmp_path, monkeypatch, capfd, caplog, kind):
    from privtune.audit import audit_run

    monkeypatch.setenv("PRIVTUNE_SECRET_SEED", str(SECRET_SEED))
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    losses, events = [], []
    real, real_losses = E.ZOEngine.pair_losses, E.ZOEngine.losses

    def spy(self, *a, **k):
        lp, lm = real(self, *a, **k)
        losses.extend(lp.tolist() + lm.tolist())
        return lp, lm

    def spy_losses(self, *a, **k):
        out = real_losses(self, *a, **k)
        losses.extend(out.tolist() + (-out).tolist())
        return out

    monkeypatch.setattr(E.ZOEngine, "pair_losses", spy)
    monkeypatch.setattr(E.ZOEngine, "losses", spy_losses)
    tr, ev = write_qa_data(tmp_path / "data", kind)
    result = train(M.build_config(qa_config_dict(kind, tr, ev, tmp_path / "run")), callback=events.append)
    audited = audit_run(tmp_path / "run", n_boot=20, callback=events.append)
    out, err = capfd.readouterr()
    logged = caplog.text + "".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    texts = [out, err, logged, json.dumps(events), json.dumps(result), json.dumps(audited)]
    check_qa_outputs(kind, tmp_path / "run", texts, losses, tmp_path / "cache")
