"""Adapters trained on an emulator carry the full model's names and shapes and plug into it; gradient cosine."""

import pytest
import torch

from privtune.errors import PrivtuneError
from privtune.models import load_model
from privtune.offsite import emulator as E
from privtune.offsite import forward as FW
from privtune.offsite import plug as P
from privtune.offsite import tune as T


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny")


def test_adapters_from_emulator_plug_into_full_model(lm):
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    amap = T.adapter_map(manifest)
    assert sorted(amap.values()) == [0, 3]
    before = T.adapter_state(emu, amap)
    T.train_adapters(emu, lm.codec, amap, T.TuneOptions(examples=8, batch_size=4, lr=1e-2))
    state = T.adapter_state(emu, amap)
    assert any(not torch.equal(state[k], before[k]) for k in state)  # training moved them
    full = dict(lm.model.named_parameters())
    expected = {n for n in full if n.startswith(("model.layers.0.", "model.layers.3."))}
    assert set(state) == expected
    assert all(state[n].shape == full[n].shape for n in state)
    old = P.plug(lm.model, state)
    try:
        assert all(torch.equal(full[n], state[n]) for n in state)
    finally:
        P.plug(lm.model, old)
    assert all(torch.equal(full[n], old[n]) for n in old)


def test_plug_rejects_foreign_tensors(lm):
    with pytest.raises(PrivtuneError, match="not parameters"):
        P.plug(lm.model, {"model.layers.9.mlp.up_proj.weight": torch.zeros(3)})
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(PrivtuneError, match="shape"):
        P.plug(lm.model, {name: torch.zeros(3, 3)})


def test_grad_cosine_is_one_for_an_uncompressed_emulator(lm):
    emu, manifest, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.0))
    _, examples = T.training_pool("sst2", 8, 0)
    task_t = "Review: {text}\nSentiment:"
    ids, labels = FW.encode(lm.codec, task_t, examples)
    verb = lm.codec.verbalizer_ids([" negative", " positive"])
    full_map = T.full_adapter_map(4, 1)
    assert T.grad_cosine(emu, T.adapter_map(manifest), lm.model, full_map, ids, labels, verb, 0) == pytest.approx(1.0, abs=1e-6)
    small, m2, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    assert T.grad_cosine(small, T.adapter_map(m2), lm.model, full_map, ids, labels, verb, 0) < 0.999999
