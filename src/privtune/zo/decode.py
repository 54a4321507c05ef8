"""Greedy decoding with a key/value cache: what a generation task's eval runs (task.max_new_tokens, task.stop).

The model runs at θ as it is (no perturbation is active outside a ZO pass). Prompts are decoded in length-sorted,
left-padded micro-batches: the prompt pass fills the cache once, then every new token is one position through the
model with the cached keys and values of everything before it. A row stops at a token whose text holds the stop
string (or at end-of-sequence); its text is cut at the stop string.
"""

from __future__ import annotations

import torch

from .forward import left_pad, length_sorted_chunks, position_ids


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int = 0,
           device="cpu", micro_batch: int = 16, callback=None, min_new_tokens: int = 0) -> list[list[int]]:
    """The greedily generated token ids after each prompt (at most max_new_tokens, ending with the stop token when
    one was produced; the first `min_new_tokens` are never stop tokens). `callback` gets {"event": "score", "done",
    "total"} after each micro-batch."""
    from transformers import DynamicCache

    out: list[list[int]] = [[] for _ in prompts]
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    done_count = 0
    for chunk in length_sorted_chunks(prompts, range(len(prompts)), micro_batch):
        ids, attn = left_pad([prompts[j] for j in chunk], pad_id)
        ids, attn = ids.to(device), attn.to(device)
        pos = position_ids(attn)
        cache = DynamicCache()
        finished = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        for n in range(int(max_new_tokens)):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float()
            if n < min_new_tokens:
                logits[:, stop] = float("-inf")
            nxt = logits.argmax(-1)
            for r, j in enumerate(chunk):
                if not finished[r]:
                    out[j].append(int(nxt[r]))
            finished |= torch.isin(nxt, stop)
            if bool(finished.all()):
                break
            ids = nxt[:, None]
            attn = torch.cat([attn, attn.new_ones((len(chunk), 1))], 1)
            pos = pos[:, -1:] + 1
        done_count += len(chunk)
        if callback is not None:
            callback({"event": "score", "done": done_count, "total": len(prompts)})
    return out


def cut_at(text: str, stop: str) -> str:
    """The answer a generated text gives: everything before the stop string, stripped."""
    return text.split(stop, 1)[0].strip() if stop else text.strip()
