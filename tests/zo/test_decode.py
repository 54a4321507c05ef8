"""Greedy decoding with the key/value cache (zo.decode) equals greedy decoding by full recomputation."""

from __future__ import annotations

import torch

from privtune.models import build_tiny
from privtune.zo.decode import cut_at, greedy


def naive(model, prompt: list[int], n: int, stop: set[int]) -> list[int]:
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].float().argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt in stop:
                break
    return out


def test_cached_greedy_equals_recomputation_across_padding_and_micro_batches():
    model = build_tiny(3).model
    prompts = [[1, 5, 9, 14, 3], [1, 7], [1, 30, 31, 32, 33, 34, 35, 36, 37], [1, 8, 8]]
    for micro_batch in (1, 3, 16):
        got = greedy(model, prompts, 6, set(), micro_batch=micro_batch)
        assert got == [naive(model, p, 6, set()) for p in prompts]


def test_a_row_stops_at_its_stop_token_and_keeps_it():
    model = build_tiny(3).model
    prompt = [1, 5, 9, 14, 3]
    free = naive(model, prompt, 6, set())
    stop = {free[2]}
    got = greedy(model, [prompt], 6, stop)[0]
    assert got == free[:free.index(free[2]) + 1]


def test_cut_at():
    assert cut_at(" Paris\nQuestion: x", "\n") == "Paris"
    assert cut_at("  no stop ", "\n") == "no stop"
