"""Every shipped config validates, and the tiny ones run end to end through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from privtune import methods as M

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    for required in ["sst2_mezo.yaml", "tiny_mezo.yaml", "tiny_paczero_zpl.yaml", "tiny_paczero_mi.yaml",
                     "sst2_paczero_zpl.yaml", "sst2_paczero_mi.yaml", "tiny_dpzero.yaml", "tiny_dpzo.yaml", "tiny_dpsgd_lora.yaml", "sst2_dpzero.yaml", "sst2_dpzo.yaml",
                     "sst2_dpsgd_lora.yaml"]:
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_validates(path):
    cfg = M.load_config(path)
    assert cfg.method.name and cfg.out_dir


@pytest.mark.parametrize("name", ["tiny_paczero_zpl", "tiny_paczero_mi", "tiny_dpzero", "tiny_dpzo", "tiny_dpsgd_lora",
                                  "tiny_bboxer"])
def test_tiny_config_runs_from_the_cli(tmp_path, name):
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "privtune", "train", "-c", f"configs/{name}.yaml", "train.steps=8",
                        "train.checkpoint_every=4", f"out_dir={out}", "-q"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**__import__("os").environ, "PRIVTUNE_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 8
    priv = json.loads((out / "privacy.json").read_text())
    assert priv["steps_done"] == 8 and priv["mia_posterior_bound"] is not None
    r = subprocess.run([sys.executable, "-m", "privtune", "replay", str(out), "--verify"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    if priv["method"] == "dpsgd":  # its release is a noisy gradient vector (only a digest is kept): no replay
        assert r.returncode == 2 and "cannot be rebuilt from its transcript" in r.stderr, r.stderr
    else:
        assert r.returncode == 0 and "bit-identical" in r.stdout, r.stdout + r.stderr
