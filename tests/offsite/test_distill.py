"""Emulator distillation on the tiny model: it fits the full middle better on held-out text, trains only the middle,
is reproducible, and names the option on bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from privtune.cli import app
from privtune.errors import ConfigError
from privtune.models import load_model
from privtune.offsite import distill as D
from privtune.offsite import emulator as E


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny")


def _opt(**over):
    return D.DistillOptions(**{"corpus": "agnews", "texts": 48, "max_tokens": 16, "steps": 40, "batch_size": 8,
                               "lr": 3e-3, **over})


def test_distillation_lowers_held_out_error_and_trains_only_the_middle(lm):
    plain, manifest, plain_state = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    measured = {}
    emu, dmanifest, state = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5,
                                                       distill=_opt()), measured=measured)
    fit = measured["distill_held_out_nmse"]
    assert fit["after"] < 0.8 * fit["before"], fit
    middle = {f"model.layers.{b['index']}." for b in dmanifest["blocks"] if b["role"] == "middle"}
    changed = {k for k in state if not torch.equal(state[k], plain_state[k])}
    assert changed and all(any(k.startswith(m) for m in middle) for k in changed), sorted(changed)[:5]
    assert dmanifest["distill"]["corpus"]["task"] == "agnews"
    assert dmanifest["distill"]["options"]["steps"] == 40
    assert "distill_held_out_nmse" not in json.dumps(dmanifest)  # measured values stay out of the manifest
    assert {k: v for k, v in dmanifest.items() if k != "distill"} == manifest


def test_distillation_is_reproducible(lm):
    a = E.build(lm, E.BuildOptions(method="gradot", adapters=1, ratio=0.5, calib=8, distill=_opt(steps=5)))
    b = E.build(lm, E.BuildOptions(method="gradot", adapters=1, ratio=0.5, calib=8, distill=_opt(steps=5)))
    assert E.manifest_bytes(a[1]) == E.manifest_bytes(b[1])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def test_corpus_file_and_bad_options(lm, tmp_path):
    f = tmp_path / "public.txt"
    f.write_text("\n".join(f"public sentence number {i} about the weather" for i in range(20)) + "\n")
    texts, ident = D.corpus_texts(_opt(corpus=str(f), texts=10))
    assert len(texts) == 10 and ident["file"] == "public.txt" and len(ident["sha256"]) == 64
    for over, flag in (({"corpus": str(tmp_path / "none.txt")}, "--distill-corpus"), ({"steps": 0}, "--distill-steps"),
                       ({"lr": float("nan")}, "--distill-lr"), ({"texts": 10**6}, "--distill-texts")):
        with pytest.raises(ConfigError, match=flag):
            E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5, distill=_opt(**over)))


def test_cli_build_with_distillation(tmp_path):
    out = tmp_path / "emu"
    r = CliRunner().invoke(app, ["offsite", "build", "--model", "tiny", "--method", "uniform-drop", "--adapters", "1",
                                 "--out", str(out), "--distill-corpus", "agnews", "--distill-texts", "24",
                                 "--distill-steps", "3", "--distill-max-tokens", "12", "-q"])
    assert r.exit_code == 0, r.output
    build = json.loads((out / "build.json").read_text())
    assert set(build["distill_held_out_nmse"]) == {"before", "after"}
    r = CliRunner().invoke(app, ["offsite", "build", "--model", "tiny", "--method", "uniform-drop", "--adapters", "1",
                                 "--out", str(tmp_path / "bad"), "--distill-corpus", "agnews", "--distill-steps", "0"])
    assert r.exit_code == 2 and "error: --distill-steps" in r.output, r.output
    assert not (tmp_path / "bad").exists()
