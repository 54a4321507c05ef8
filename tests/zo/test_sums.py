"""Fixed-order reductions (zo.sums): the sums every method takes over a batch do not depend on the process count."""

import numpy as np
import pytest
import torch

from privtune import dist
from privtune.models import build_tiny
from privtune.trainable import select
from privtune.zo.engine import ZOEngine
from privtune.zo.forward import Encoded
from privtune.zo.sequences import SeqSpec
from privtune.zo.sums import accuracy, chunk_sums, ordered_sum, pair_sums, score, zo_scalars


@pytest.mark.parametrize("P", [2, 3, 7])
def test_chunk_sums_do_not_depend_on_the_number_of_processes(monkeypatch, P):
    """chunk_sums with P simulated ranks (each computing its chunks, partial sums assembled as all_gather would)
    equals the 1-process sum bit for bit, on values where summation order matters."""
    rng = np.random.default_rng(1)
    n = 29
    vals = rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-8, 9, size=(n, 1))

    class Eng:
        def chunks(self, data, idx):
            order = sorted(idx)
            return [order[s:s + 4] for s in range(0, len(order), 4)]

    one = chunk_sums(Eng(), list(range(n)), None, lambda flat: vals[flat], 3)
    parts = {}
    monkeypatch.setitem(dist._state, "world", P)
    for r in range(P):
        monkeypatch.setitem(dist._state, "rank", r)
        monkeypatch.setattr(dist, "gather_rows", lambda part, k, r=r: parts.__setitem__(r, part) or np.zeros((k, 3)))
        chunk_sums(Eng(), list(range(n)), None, lambda flat: vals[flat], 3)
    n_chunks = len(Eng().chunks(None, range(n)))
    table = np.empty((n_chunks, 3))
    for r in range(P):
        table[r::P] = parts[r]
    assert np.array_equal(ordered_sum(table), one)


def test_ordered_sum_adds_rows_in_row_order():
    rows = np.array([[1e16], [1.0], [-1e16]])  # in row order the 1.0 is absorbed; another order would keep it
    assert ordered_sum(rows)[0] == 0.0
    assert ordered_sum(rows[::-1])[0] == 0.0 and ordered_sum(rows[[0, 2, 1]])[0] == 1.0


def test_sums_are_taken_chunk_by_chunk_in_the_engines_order():
    """Each chunk is summed on its own, then the chunk sums in chunk order (not one flat sum of the examples)."""
    vals = np.array([1e16, 1.0, -1e16, 1.0])

    class Eng:
        def chunks(self, data, idx):
            return [[0, 2], [1, 3]]

    assert chunk_sums(Eng(), vals, None, lambda flat: vals[flat], 1)[0] == 2.0
    assert ordered_sum(vals[:, None])[0] == 1.0  # the flat sum loses a 1.0


def test_pair_sums_and_zo_scalars():
    class Eng:  # no chunks: one chunk, the test-double path
        def pair_losses(self, data, idx, seed, eps):
            lp = torch.tensor([float(i) for i in idx], dtype=torch.float64)
            return lp, -lp

    g = zo_scalars(torch.tensor([3.0]), torch.tensor([1.0]), 0.5)
    assert float(g) == 2.0  # (ℓ⁺ − ℓ⁻) / 2ε
    total = pair_sums(Eng(), list(range(4)), None, 1, 0.5, lambda lp, lm, ex: zo_scalars(lp, lm, 0.5).numpy(), 1)
    assert total[0] == sum(2 * i / 1.0 for i in range(4))


def test_accuracy_counts_argmax_hits():
    data = Encoded([[1], [2], [3]], torch.tensor([0, 1, 1]))

    class Eng:
        def logits(self, data, idx):
            return torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])[idx]

    assert accuracy(Eng(), data) == (2 / 3, 2)


def test_accuracy_reports_each_chunk_it_scores():
    data = Encoded([[1], [2], [3], [4], [5]], torch.tensor([0, 1, 1, 0, 0]))
    seen = []

    class Eng:
        def chunks(self, data, idx):
            return [[0, 1], [2, 3], [4]]

        def logits(self, data, idx):
            seen.append(list(idx))
            return torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])[idx]

    events = []
    assert accuracy(Eng(), data, callback=events.append) == (3 / 5, 3)
    assert seen == [[0, 1], [2, 3], [4]]  # one pass per chunk
    assert events == [{"event": "score", "done": d, "total": 5} for d in (2, 4, 5)]


def test_generation_score_decodes_from_the_prompts_and_refuses_examples_without_them():
    """A generation task is scored by greedy answers decoded from the prompts alone. Examples encoded without them
    (Forward.encode_packed's ids are prompt + gold answer) are refused, not decoded from after their answer."""
    lm = build_tiny(0)
    eng = ZOEngine(select(lm.model, "final_norm"), [], seq=SeqSpec("generation", codec=lm.codec, max_new_tokens=2))
    prompts = [[1, 5, 9], [1, 7]]
    data = eng.forward.encode_packed(prompts, [[[40, 41]], [[50]]], [0, 0])
    data.answers = [("a",), ("b",)]
    with pytest.raises(ValueError, match="no prompts"):
        score(eng, data)
    data.prompts = prompts
    assert score(eng, data)["total"] == 2
