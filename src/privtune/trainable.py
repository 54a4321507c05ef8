"""Which parameters a run trains: `lora` | `full` | `top_layers:k` | `norms` | `final_norm`, and where the frozen
prefix ends.

`select(model, spec)` returns the (possibly peft-wrapped) model, the ordered list of trainable (name, Parameter)
and `first_trainable_layer`: every block below it (and the embedding) is frozen, so its output can be cached.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError


@dataclass
class LoraSpec:
    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: int | None = None  # only the last `layers` blocks get adapters (enables the frozen-prefix cache)


@dataclass
class Selection:
    model: torch.nn.Module  # the model to run (peft-wrapped for lora)
    params: list[tuple[str, torch.nn.Parameter]]
    first_trainable_layer: int  # 0 = nothing cacheable; n_layers = only the final norm/head
    kind: str


def decoder_parts(model: torch.nn.Module):
    """(base, layers) of a Llama-family causal LM, peft-wrapped or not; None if the layout is unknown."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(inner, "model", None)
    layers = getattr(base, "layers", None)
    if base is None or layers is None or not hasattr(base, "embed_tokens") or not hasattr(base, "norm"):
        return None, None
    return base, layers


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _cache_boundary(name: str, n_layers: int) -> int:
    """Index of the first block whose input this parameter can change (n_layers for the final norm)."""
    layer = _layer_of(name)
    if layer is not None:
        return layer
    return n_layers if name.endswith("model.norm.weight") else 0  # embedding / head / unknown: nothing cacheable


def parse_kind(kind: str) -> tuple[str, int | None]:
    if kind in ("lora", "full", "norms", "final_norm"):
        return kind, None
    m = re.fullmatch(r"top_layers:(\d+)", kind)
    if m and int(m.group(1)) >= 1:
        return "top_layers", int(m.group(1))
    raise ConfigError(f"trainable.kind: {kind!r} is not one of lora, full, norms, final_norm, top_layers:K (K >= 1)")


def select(model: torch.nn.Module, kind: str, lora: LoraSpec | None = None, seed: int = 0) -> Selection:
    name, k = parse_kind(kind)
    base, layers = decoder_parts(model)
    n_layers = len(layers) if layers is not None else 0
    for p in model.parameters():
        p.requires_grad_(False)

    if name == "lora":
        model = _wrap_lora(model, lora or LoraSpec(), n_layers, seed)
        chosen = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    elif name == "full":
        chosen = list(model.named_parameters())
    elif name == "norms":
        chosen = [(n, p) for n, p in model.named_parameters() if p.ndim == 1 and "norm" in n]
    elif name == "final_norm":  # the final norm's gain vector: every block is frozen and cacheable
        chosen = [(n, p) for n, p in model.named_parameters() if n.endswith("model.norm.weight")]
    else:
        if layers is None:
            raise ConfigError("trainable.kind: top_layers needs a Llama-style model (model.layers); use lora or full")
        if k > n_layers:
            raise ConfigError(f"trainable.kind: top_layers:{k} but the model has {n_layers} layers")
        first = n_layers - k
        chosen = [(n, p) for n, p in model.named_parameters()
                  if (_layer_of(n) is not None and _layer_of(n) >= first) or n.endswith("model.norm.weight")]
    if not chosen:
        raise ConfigError(f"trainable.kind: {kind!r} selects no parameter of this model")
    # tied weights appear once (named_parameters deduplicates); keep a stable order
    for _, p in chosen:
        p.requires_grad_(True)

    first_layer = min(_cache_boundary(n, n_layers) for n, _ in chosen) if layers is not None else 0
    return Selection(model, chosen, first_layer, kind)


def _wrap_lora(model, spec: LoraSpec, n_layers: int, seed: int):
    from peft import LoraConfig, get_peft_model

    if spec.r < 1:
        raise ConfigError(f"trainable.lora.r: must be >= 1, got {spec.r}")
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(hidden, int) and spec.r > hidden:  # a rank above the hidden size adds nothing but memory
        raise ConfigError(f"trainable.lora.r: {spec.r} is above the model's hidden size {hidden}")
    layers = None
    if spec.layers is not None:
        if not 1 <= spec.layers <= n_layers:
            raise ConfigError(f"trainable.lora.layers: must be in 1..{n_layers}, got {spec.layers}")
        layers = list(range(n_layers - spec.layers, n_layers))
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=list(spec.target_modules), lora_dropout=0.0,
                     bias="none", layers_to_transform=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA A init is random: make it a function of the run seed
        try:
            with no_checkpointing_notice():
                wrapped = get_peft_model(model, cfg)
        except ValueError as e:
            raise ConfigError(f"trainable.lora.target_modules: {str(e).splitlines()[0]}") from None
    wrapped.eval()
    return wrapped


@contextlib.contextmanager
def no_checkpointing_notice():
    """peft and save_pretrained read model.is_gradient_checkpointing, which transformers 5 deprecates with a
    FutureWarning each time; privtune never checkpoints activations, so the notice only tells a user about peft."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def base_model_path(model: torch.nn.Module) -> str | None:
    """The folder a (possibly peft-wrapped) model was loaded from, absolute; None for a model built in memory (tiny)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(getattr(inner, "config", None), "name_or_path", "") or ""
    return str(Path(name).expanduser().resolve()) if name and Path(name).expanduser().is_dir() else None


def save_adapter(sel: Selection, folder: Path) -> bool:
    """A LoRA selection as a standard peft adapter folder (`PeftModel.from_pretrained(base, folder)` loads it), with
    the base model's folder recorded in adapter_config.json. False, nothing written, for the other kinds: their
    trainable.safetensors already holds the changed tensors under the model's own parameter names."""
    if not hasattr(sel.model, "peft_config"):
        return False
    for cfg in sel.model.peft_config.values():
        cfg.base_model_name_or_path = base_model_path(sel.model)
    with no_checkpointing_notice():
        sel.model.save_pretrained(folder)
    return True


def merged_model(sel: Selection) -> torch.nn.Module:
    """The selection's model as a plain transformers model: LoRA adapters merged into the base weights (in place:
    the selection is spent), any other kind as it is (its parameters were trained in place)."""
    if hasattr(sel.model, "merge_and_unload"):
        with no_checkpointing_notice():
            return sel.model.merge_and_unload()
    return sel.model


def trainable_state(sel: Selection) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in sel.params}


def load_trainable_state(sel: Selection, state: dict[str, torch.Tensor]) -> None:
    names = {n for n, _ in sel.params}
    if set(state) != names:
        missing, extra = sorted(names - set(state))[:3], sorted(set(state) - names)[:3]
        raise ConfigError(f"model: saved weights do not match the trainable set (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for n, p in sel.params:
            if state[n].shape != p.shape:
                raise ConfigError(f"model: saved tensor {n} has shape {tuple(state[n].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[n])
