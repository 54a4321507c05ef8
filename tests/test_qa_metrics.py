"""privtune.qa_metrics: SQuAD v1.1 normalisation, exact match and token F1, checked on hand-worked cases."""

import pytest

from privtune.qa_metrics import exact_match, normalize_answer, squad_scores, token_f1


def test_normalize_lowercases_strips_punctuation_articles_and_whitespace():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear; the end.") == "apple pear end"
    assert normalize_answer("  Theory of   an idea ") == "theory of idea"  # "the" inside "theory" stays
    assert normalize_answer("U.S.-based") == "usbased"  # punctuation removed, not replaced by a space
    assert normalize_answer("...") == ""


def test_exact_match_after_normalisation():
    assert exact_match("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert exact_match("Carolina Panthers", ["Denver Broncos", "carolina panthers"]) == 1.0  # any gold counts


def test_f1_partial_overlap_by_hand():
    # pred tokens: denver broncos won (3); gold: denver broncos (2); common 2: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # pred: broncos; gold: denver broncos; P = 1, R = 1/2, F1 = 2/3
    assert token_f1("the Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)


def test_f1_counts_repeated_tokens_once_per_match():
    # "go go go" vs gold "go": common = min(3, 1) = 1; P = 1/3, R = 1, F1 = 0.5
    assert token_f1("go go go", ["go"]) == pytest.approx(0.5)


def test_f1_takes_the_best_gold():
    assert token_f1("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]) == pytest.approx(0.8)


def test_empty_prediction_scores_zero():
    assert exact_match("", ["Denver Broncos"]) == 0.0
    assert token_f1("", ["Denver Broncos"]) == 0.0
    assert token_f1("the", ["Denver Broncos"]) == 0.0  # an article alone normalises to nothing


def test_articles_only_gold_and_prediction_match_exactly_but_have_no_tokens():
    # both normalise to "": the official script counts EM 1 and F1 0 (no common token)
    assert exact_match("The", ["a"]) == 1.0
    assert token_f1("The", ["a"]) == 0.0


def test_squad_scores_in_percent():
    preds = ["Denver Broncos", "Denver Broncos won", ""]
    golds = [["Denver Broncos", "Broncos"], ["Denver Broncos"], ["Santa Clara"]]
    scores = squad_scores(preds, golds)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="golds"):
        token_f1("x", [])
    with pytest.raises(ValueError, match="golds"):
        exact_match("x", "Denver")  # a bare string is not a list of answers
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        squad_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no questions"):
        squad_scores([], [])
