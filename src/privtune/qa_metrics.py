"""SQuAD v1.1 answer metrics: exact match and token F1 after the official normalisation (Rajpurkar et al. 2016).

Pure functions of strings, no torch. Each prediction is scored against every gold answer and keeps the best, and
`squad_scores` reports percentages, as the official evaluate-v1.1 script does.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCT = frozenset(string.punctuation)  # ASCII punctuation only, as the official script
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (in the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())  # tokens shared, with multiplicity
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    _check_golds(golds)
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in golds))


def token_f1(pred: str, golds: Sequence[str]) -> float:
    """The best token-level F1 (bag of normalised words) of the prediction against any gold answer, in [0, 1]."""
    _check_golds(golds)
    return max(_f1(pred, g) for g in golds)


def question_scores(preds: Sequence[str], golds_list: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """{"exact_match": [...], "f1": [...]}: each question's scores, fractions in [0, 1], in question order."""
    if len(preds) != len(golds_list):
        raise ValueError(f"question_scores: {len(preds)} predictions for {len(golds_list)} questions")
    if not preds:
        raise ValueError("question_scores: no questions to score")
    return {"exact_match": [exact_match(p, g) for p, g in zip(preds, golds_list)],
            "f1": [token_f1(p, g) for p, g in zip(preds, golds_list)]}


def percent_means(scores: dict[str, list[float]]) -> dict[str, float]:
    """The means over questions of `question_scores`, in percent (0..100)."""
    return {k: 100.0 * sum(v) / len(v) for k, v in scores.items()}


def squad_scores(preds: Sequence[str], golds_list: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"exact_match": %, "f1": %}: the means over questions, in percent (0..100)."""
    return percent_means(question_scores(preds, golds_list))


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str) or not golds:
        raise ValueError("golds: expected a non-empty list of gold answers")
