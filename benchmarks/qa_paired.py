"""Two models on the same eval questions: the mean per-question difference in F1 and exact match, with its 95% interval.

`privtune eval ... --out FILE` on a generation task's eval split keeps each question's scores (`per_question`). Two
such files over the same questions (same task, split and count), asked and decoded the same way (template,
max_new_tokens, min_new_tokens, stop: `privtune eval --model M --max-new-tokens N` matches a run's; an eval from
before min_new_tokens existed decoded with 0), give a paired interval: most
questions get the same answer from both models, so the difference's spread is far below either score's, and this
interval is much narrower than two unpaired ones side by side (qa_table.ci95). It answers "is B above A on these questions?", not "on SQuAD".

Several seeds of one preset: give them comma-separated (B.json,B2.json): their scores are averaged question by
question. `--share C.json[,C2.json]` asks how much of B's gain over A another method C keeps: `share` is
ΣΔC / ΣΔB (Δ: the per-question gain over A), and `margin` the paired interval of mean(ΔC − r·ΔB), r = --at (default
0.5): C keeps at least r of B's gain beyond the interval when its low end is above 0.

Usage: python benchmarks/qa_paired.py A.json B.json[,B2.json] [--share C.json[,...] [--at R]] [--out FILE]
(A: the reference, e.g. zero-shot; B: a run.) Prints, and with --out writes, {metric: {mean_a, mean_b, diff (B − A),
ci95, changed, n}} in fractions of 1, and with --share {"share": {metric: {share, at, margin: {diff, ci95}}}}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SAME = ("task", "split", "data", "total")  # what two evals must share to be paired question by question ...
DECODING = ("template", "max_new_tokens", "min_new_tokens", "stop")  # ... and asked and decoded them the same way
OLD_DECODING = {"min_new_tokens": 0}  # what an eval written before a DECODING key existed did


def paired(a: list[float], b: list[float]) -> dict:
    """The mean of b_i − a_i over paired questions, and the normal 95% half-width 1.96·s/√n of that mean (s: the
    differences' sample standard deviation); `changed`: how many questions' scores differ."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired: need two equal-length score lists of ≥ 2 questions, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return {"mean_a": sum(a) / n, "mean_b": sum(b) / n, "diff": mean, "ci95": 1.96 * math.sqrt(var / n),
            "changed": sum(x != 0 for x in d), "n": n}


def averaged(results: list[dict]) -> dict:
    """Several evals of the same questions (e.g. one preset's seeds) as one: each question's scores averaged. They
    must be over the same questions and decoded the same way, as for compare()."""
    first = results[0]
    for r in results[1:]:
        check_pair(first, r)
    n = len(results)
    pq = {m: [sum(r["per_question"][m][i] for r in results) / n for i in range(len(first["per_question"][m]))]
          for m in first["per_question"]}
    return {**first, "per_question": pq, "averaged": n}


def share(ra: dict, rb: dict, rc: dict, at: float = 0.5) -> dict:
    """How much of B's per-question gain over A C keeps: ΣΔC / ΣΔB, and the paired interval of mean(ΔC − at·ΔB)."""
    check_pair(ra, rb)
    check_pair(ra, rc)
    out = {}
    for m in ra["per_question"]:
        a, b, c = (r["per_question"][m] for r in (ra, rb, rc))
        gain_b = sum(y - x for x, y in zip(a, b))
        kept = [x + at * (y - x) for x, y in zip(a, b)]  # A plus the share `at` of B's gain, question by question
        margin = paired(kept, c)
        out[m] = {"share": sum(z - x for x, z in zip(a, c)) / gain_b if gain_b else None, "at": at,
                  "margin": {"diff": margin["diff"], "ci95": margin["ci95"]}}
    return out


def _decoding(r: dict, key: str):
    """How eval `r` decoded, by DECODING key (an eval from before the key existed: OLD_DECODING's value)."""
    return r.get(key, OLD_DECODING.get(key))


def check_pair(ra: dict, rb: dict) -> None:
    """Refuse two `privtune eval --out` results that are not the same questions asked and decoded the same way,
    naming what differs."""
    for name, r in (("A", ra), ("B", rb)):
        if "per_question" not in r:
            raise ValueError(f"{name}: no per_question scores (privtune eval --out on a generation task's eval split)")
    differ = [k for k in SAME if ra.get(k) != rb.get(k)]
    if differ:
        raise ValueError(f"not the same questions: {', '.join(f'{k} {ra.get(k)!r} vs {rb.get(k)!r}' for k in differ)}")
    differ = [k for k in DECODING if _decoding(ra, k) != _decoding(rb, k)]
    if differ:  # e.g. the base model decoded 32 tokens, the run's preset 24: eval --model ... --max-new-tokens 24
        raise ValueError("not decoded the same way: "
                         + ", ".join(f"{k} {_decoding(ra, k)!r} vs {_decoding(rb, k)!r}" for k in differ))


def compare(ra: dict, rb: dict) -> dict:
    """paired() for every per-question metric of two `privtune eval --out` results over the same questions."""
    check_pair(ra, rb)
    return {m: paired(ra["per_question"][m], rb["per_question"][m]) for m in ra["per_question"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the reference eval (privtune eval --out), e.g. the base model's")
    ap.add_argument("b", help="the eval compared with it, on the same questions (comma-separated: averaged)")
    ap.add_argument("--share", default=None, help="another method's eval(s): the share of B's gain it keeps")
    ap.add_argument("--at", type=float, default=0.5, help="the share --share is tested against (default 0.5)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    def load(files: str) -> dict:
        return averaged([json.loads(Path(f).read_text()) for f in files.split(",")])

    try:
        ra, rb = load(args.a), load(args.b)
        result = {"benchmark": "qa_paired", "a": args.a, "b": args.b, **compare(ra, rb)}
        if args.share is not None:
            result |= {"c": args.share, "share": share(ra, rb, load(args.share), args.at)}
    except (OSError, ValueError) as e:
        print(f"qa_paired: {e}", file=sys.stderr)
        raise SystemExit(2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
