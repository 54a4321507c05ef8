"""Emulator builders on the tiny model: exactness at ratio 0, shapes, equal size, byte-reproducible manifest."""

import pytest
import torch

from privtune.data import load_task
from privtune.errors import ConfigError
from privtune.models import load_model
from privtune.offsite import emulator as E
from privtune.offsite import forward as FW


@pytest.fixture(scope="module")
def env():
    lm = load_model("tiny")
    task = load_task("sst2", eval_limit=24)
    ids, _ = FW.encode(lm.codec, task.template, task.eval)
    verb = lm.codec.verbalizer_ids(task.verbalizer)
    with torch.no_grad():
        full = FW.verbalizer_logits(lm.model, ids, verb)
    return lm, ids, verb, full


def _logits(model, env):
    with torch.no_grad():
        return FW.verbalizer_logits(model, env[1], env[2])


def test_uniform_keep_every_kth():
    assert E.uniform_keep(30, 2, 0.5) == list(range(2, 28, 2))
    assert E.uniform_keep(30, 2, 0.0) == list(range(2, 28))
    assert E.uniform_keep(8, 1, 0.5) == [1, 3, 5]


@pytest.mark.parametrize("method", E.METHODS)
def test_ratio_zero_reproduces_the_full_model(env, method):
    lm = env[0]
    emu, manifest, _ = E.build(lm, E.BuildOptions(method=method, adapters=1, ratio=0.0, calib=8))
    assert [b["source"] for b in manifest["blocks"]] == [0, 1, 2, 3]
    assert all("ranks" not in b and "channels" not in b for b in manifest["blocks"])
    assert torch.equal(_logits(emu, env), env[3])


def test_drd_and_scp_keeping_everything_reproduce_outputs(env):
    """The compressed block types themselves: all SVD components (as factors) and all channels ≈ the original."""
    lm = env[0]
    layers = lm.model.model.layers
    blocks = [{"index": i, "source": i, "role": "middle"} for i in range(len(layers))]
    attn = layers[1].self_attn
    blocks[1]["ranks"] = {p: min(getattr(attn, p).weight.shape) for p in E.ATTN}
    blocks[1]["components"] = {p: list(range(r)) for p, r in blocks[1]["ranks"].items()}
    blocks[2]["channels"] = list(range(layers[2].mlp.gate_proj.out_features))
    emu = E.skeleton(E._config_dict(lm.model.config, len(blocks)), blocks)
    E._copy_weights(lm.model, emu, blocks)
    assert isinstance(emu.model.layers[1].self_attn.q_proj, E.LowRankLinear)
    assert torch.allclose(_logits(emu, env), env[3], atol=1e-5)


def test_gradot_shapes_size_and_reproducible_manifest(env, tmp_path):
    lm = env[0]
    opt = E.BuildOptions(method="gradot", adapters=1, ratio=0.5, calib=8, lam=0.5)
    emu, manifest, state = E.build(lm, opt)
    emu2, manifest2, state2 = E.build(lm, opt)
    assert E.manifest_bytes(manifest) == E.manifest_bytes(manifest2)
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    # every middle block is compressed to ≤ half its parameters; shapes agree with the manifest
    for b in manifest["blocks"]:
        layer, src = emu.model.layers[b["index"]], lm.model.model.layers[b["source"]]
        if b["role"] == "adapter":
            assert {n: p.shape for n, p in layer.named_parameters()} == {n: p.shape for n, p in src.named_parameters()}
            continue
        assert E.block_params(layer) <= 0.5 * E.block_params(src) + 2 * src.mlp.gate_proj.in_features
        assert layer.mlp.gate_proj.out_features == len(b["channels"]) == layer.mlp.down_proj.in_features
        for p, r in b.get("ranks", {}).items():
            assert getattr(layer.self_attn, p).a.shape[0] == r == len(b["components"][p])
    # equal size with uniform drop at the same ratio (within 2%)
    _, uni, _ = E.build(lm, E.BuildOptions(method="uniform-drop", adapters=1, ratio=0.5))
    assert abs(manifest["params"]["emulator"] - uni["params"]["emulator"]) <= 0.02 * uni["params"]["emulator"]
    # the folder: same manifest bytes twice, and it loads back to the same function
    for d in ("a", "b"):
        E.save(tmp_path / d, lm, manifest if d == "a" else manifest2, state if d == "a" else state2, {})
    assert (tmp_path / "a" / E.MANIFEST).read_bytes() == (tmp_path / "b" / E.MANIFEST).read_bytes()
    loaded, m = E.load(tmp_path / "a")
    assert m == manifest
    assert torch.equal(_logits(loaded.model, env), _logits(emu, env))


def test_bad_options_name_the_flag(env):
    lm = env[0]
    for over, flag in (({"ratio": 1.0}, "--ratio"), ({"ratio": -0.1}, "--ratio"), ({"adapters": 2}, "--adapters"),
                       ({"method": "distill"}, "--method"), ({"keep_top": 2.0}, "--keep-top")):
        with pytest.raises(ConfigError, match=f"^{flag}"):
            E.build(lm, E.BuildOptions(**{"adapters": 1, **over}))
