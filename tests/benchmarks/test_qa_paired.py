"""benchmarks/qa_paired.py: the paired difference of two evals over the same questions, its interval, and refusals
of evals that are not over the same questions."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_paired_interval_is_the_normal_interval_of_the_mean_difference(qa_paired):
    rng = np.random.default_rng(0)
    a = rng.random(400)
    b = np.where(rng.random(400) < 0.8, a, rng.random(400))  # most questions unchanged, as for two close models
    r = qa_paired.paired(a.tolist(), b.tolist())
    d = b - a
    assert r["diff"] == pytest.approx(d.mean()) and r["n"] == 400
    assert r["ci95"] == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(400))
    assert r["changed"] == int((d != 0).sum()) and 0 < r["changed"] < 400
    assert r["mean_b"] - r["mean_a"] == pytest.approx(r["diff"])
    # pairing is what narrows it: the unpaired interval of the difference is wider on these correlated scores
    unpaired = 1.96 * math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 400)
    assert r["ci95"] < unpaired


def test_identical_evals_differ_by_exactly_zero(qa_paired):
    r = qa_paired.paired([0.0, 1.0, 0.5], [0.0, 1.0, 0.5])
    assert r["diff"] == 0.0 and r["ci95"] == 0.0 and r["changed"] == 0


def _eval(f1, em, **kw):
    return {"task": "squad", "split": "dev", "total": len(f1), "f1": sum(f1) / len(f1),
            "per_question": {"f1": f1, "exact_match": em}, **kw}


def test_compare_pairs_every_metric_and_refuses_other_questions(qa_paired):
    a, b = _eval([0.2, 0.0, 1.0], [0.0, 0.0, 1.0]), _eval([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    r = qa_paired.compare(a, b)
    assert set(r) == {"f1", "exact_match"}
    assert r["f1"]["diff"] == pytest.approx(0.8 / 3) and r["exact_match"]["changed"] == 1
    with pytest.raises(ValueError, match="total"):
        qa_paired.compare(a, _eval([0.1, 0.2], [0.0, 0.0]))
    with pytest.raises(ValueError, match="split"):
        qa_paired.compare(a, _eval([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], split="train"))
    with pytest.raises(ValueError, match="B: no per_question"):
        qa_paired.compare(a, {"task": "squad", "split": "dev", "total": 3, "f1": 0.4})
    with pytest.raises(ValueError, match="≥ 2"):
        qa_paired.paired([0.5], [0.5])


def test_compare_refuses_evals_decoded_differently(qa_paired):
    """The same questions decoded to another length (the base model's default 32 tokens vs a preset's 24) or from
    another prompt change the scores by themselves, so they are not a paired comparison of two models."""
    a = _eval([0.2, 0.0, 1.0], [0.0, 0.0, 1.0], max_new_tokens=24, stop="\n", template="Q: {text}\nA:")
    assert qa_paired.compare(a, dict(a))["f1"]["diff"] == 0.0
    for key, other in (("max_new_tokens", 32), ("stop", "."), ("template", "{text}"), ("min_new_tokens", 1)):
        with pytest.raises(ValueError, match=f"not decoded the same way: {key}"):
            qa_paired.compare(a, {**a, key: other})
    # an eval written before min_new_tokens was recorded decoded with 0: it pairs with 0 and not with 1
    assert qa_paired.compare(a, {**a, "min_new_tokens": 0})["f1"]["diff"] == 0.0
    with pytest.raises(ValueError, match="min_new_tokens 0 vs 1"):
        qa_paired.compare(a, {**a, "min_new_tokens": 1})


def test_cli_writes_the_comparison_and_refuses_a_bad_file_with_one_line(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_eval([0.2, 0.0, 1.0], [0.0, 0.0, 1.0])))
    b.write_text(json.dumps(_eval([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])))
    script = str(REPO / "benchmarks" / "qa_paired.py")
    r = subprocess.run([sys.executable, script, str(a), str(b), "--out", str(tmp_path / "p.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["f1"]["n"] == 3
    r = subprocess.run([sys.executable, script, str(a), str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "missing.json" in r.stderr


def test_seeds_average_question_by_question_and_share_tests_the_kept_fraction(qa_paired):
    """Two seeds of B average per question; C keeps half of B's gain exactly, so its margin at 0.5 is 0, and above
    0 at a lower bar; a seed decoded differently is refused like any pair."""
    a = _eval([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0])
    b = qa_paired.averaged([_eval([1.0, 0.0, 1.0, 0.5], [1.0, 0.0, 1.0, 0.0]),
                            _eval([1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0])])
    assert b["per_question"]["f1"] == [1.0, 0.5, 0.75, 0.5] and b["averaged"] == 2
    c = _eval([0.5, 0.25, 0.625, 0.5], [0.5, 0.5, 0.0, 0.0])  # half of B's gain on every question
    r = qa_paired.share(a, b, c)
    assert r["f1"]["share"] == pytest.approx(0.5) and r["f1"]["margin"]["diff"] == pytest.approx(0.0)
    assert r["exact_match"]["share"] == pytest.approx(1.0 / 2.0)
    assert qa_paired.share(a, b, c, at=0.25)["f1"]["margin"]["diff"] == pytest.approx(0.25 * 1.75 / 4)
    assert qa_paired.share(a, a, c)["f1"]["share"] is None  # B gained nothing: no share to speak of
    with pytest.raises(ValueError, match="min_new_tokens"):
        qa_paired.averaged([a, {**a, "min_new_tokens": 1}])
