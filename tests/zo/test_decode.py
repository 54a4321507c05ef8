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


def test_min_new_tokens_masks_stop_tokens_until_then_and_changes_nothing_else():
    """An answer cannot end before min_new_tokens: where greedy would stop at once, the best non-stop token is taken
    instead; a row that would not stop there is decoded exactly as without the rule."""
    model = build_tiny(3).model
    prompts = [[1, 5, 9, 14, 3], [1, 7]]
    free = [naive(model, p, 6, set()) for p in prompts]
    stop = {free[0][0]}  # row 0 would stop at its first token
    assert greedy(model, prompts, 6, stop)[0] == free[0][:1]
    got = greedy(model, prompts, 6, stop, min_new_tokens=1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].float()
    logits[list(stop)] = float("-inf")
    assert got[0][0] == int(logits.argmax()) and got[0][0] not in stop
    if free[1][0] not in stop:
        assert got[1][:1] == free[1][:1]
    assert greedy(model, prompts, 6, stop, min_new_tokens=0) == greedy(model, prompts, 6, stop)
    every = set(range(model.config.vocab_size)) - {free[0][1]}  # everything stops but one token
    assert greedy(model, prompts[:1], 6, every, min_new_tokens=3)[0][:2] == [free[0][1]] * 2


def test_cut_at():
    assert cut_at(" Paris\nQuestion: x", "\n") == "Paris"
    assert cut_at("  no stop ", "\n") == "no stop"
