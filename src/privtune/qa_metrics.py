"""TEMPORARY (replaced by the t-data branch's module at merge)."""
import collections
import re
import string


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_scores(preds, golds_list):
    em = sum(max(float(normalize_answer(p) == normalize_answer(g)) for g in gs) for p, gs in zip(preds, golds_list))
    f1 = sum(max(_f1(p, g) for g in gs) for p, gs in zip(preds, golds_list))
    n = max(len(preds), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
