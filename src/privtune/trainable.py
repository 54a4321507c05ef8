"""Which parameters a run trains: `lora` | `full` | `top_layers:k` | `norms` | `final_norm` | `head` |
`head+final_norm`, and where the frozen prefix ends.

`select(model, spec)` returns the (possibly peft-wrapped) model, the ordered list of trainable (name, Parameter)
and `first_trainable_layer`: every block below it (and the embedding) is frozen, so its output can be cached.

`head` trains the verbalizer rows of the LM head as their own parameter (`verbalizer_head.weight`, [n_labels,
hidden], a bias-free Linear attached to the model), initialised from the (usually tied) LM-head rows of the
verbalizer tokens. The embedding / LM-head matrix itself stays frozen and untouched: a tied model's input
embedding must not move when only its scoring rows are meant to.
"""

from __future__ import annotations

import contextlib
import json
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


HEAD = "verbalizer_head"  # the module the head kinds attach to the model; saved as "verbalizer_head.weight"
HEAD_KINDS = ("head", "head+final_norm")


def _cache_boundary(name: str, n_layers: int) -> int:
    """Index of the first block whose input this parameter can change (n_layers for the final norm and the
    verbalizer head, which only read the last block's output)."""
    layer = _layer_of(name)
    if layer is not None:
        return layer
    if name.endswith("model.norm.weight") or name == f"{HEAD}.weight":
        return n_layers
    return 0  # embedding / tied LM head / unknown: nothing cacheable


def parse_kind(kind: str) -> tuple[str, int | None]:
    if kind in ("lora", "full", "norms", "final_norm") + HEAD_KINDS:
        return kind, None
    m = re.fullmatch(r"top_layers:(\d+)", kind)
    if m and int(m.group(1)) >= 1:
        return "top_layers", int(m.group(1))
    raise ConfigError(f"trainable.kind: {kind!r} is not one of lora, full, norms, final_norm, head, head+final_norm, "
                      "top_layers:K (K >= 1)")


def select(model: torch.nn.Module, kind: str, lora: LoraSpec | None = None, seed: int = 0,
           verbalizer_ids: list[int] | None = None) -> Selection:
    """`verbalizer_ids` (the label words' token ids, in label order) are needed only by the head kinds."""
    name, k = parse_kind(kind)
    base, layers = decoder_parts(model)
    n_layers = len(layers) if layers is not None else 0
    if name in HEAD_KINDS:
        if verbalizer_ids is None:
            raise ValueError(f"select: trainable.kind {kind!r} needs the verbalizer's token ids")
        attach_head(model, verbalizer_ids)
    else:
        detach_head(model)
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
    elif name in HEAD_KINDS:  # the verbalizer rows (and the final norm's gain): every block is frozen and cacheable
        chosen = [(n, p) for n, p in model.named_parameters()
                  if n == f"{HEAD}.weight" or (name == "head+final_norm" and n.endswith("model.norm.weight"))]
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


def verbalizer_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The trained verbalizer head a head kind attached to `model`, if any."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, HEAD, None)
    return head if isinstance(head, torch.nn.Linear) else None


def detach_head(model: torch.nn.Module) -> None:
    """Remove a verbalizer head (and its LM-head hook) an earlier selection attached: the model scores as before."""
    head = verbalizer_head(model)
    if head is not None:
        head.privtune_hook.remove()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        delattr(inner, HEAD)


def attach_head(model: torch.nn.Module, verbalizer_ids: list[int]) -> torch.nn.Linear:
    """Attach `verbalizer_head`: a bias-free Linear(hidden → n_labels) whose rows start as copies of the LM-head
    rows of the verbalizer tokens. A plain Linear (not a bare tensor) so that every path sees it the same way: the
    ZO engine's module hooks perturb it, Opacus computes its per-example gradients, and a hook on the LM head puts
    its rows in place of the verbalizer columns of the model's own full-vocabulary logits (the audit's token
    statistics, a model without the Llama layout), so the model scores exactly what the trained head says."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.get_output_embeddings()
    if out is None:
        raise ConfigError("trainable.kind: head needs a model with an LM head (get_output_embeddings)")
    detach_head(model)  # selecting again on the same model: start over from the frozen rows
    w = out.weight
    ids = [int(i) for i in verbalizer_ids]
    head = torch.nn.Linear(w.shape[1], len(ids), bias=False, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        head.weight.copy_(w[torch.tensor(ids, device=w.device)])
    head.verbalizer_ids = ids
    inner.add_module(HEAD, head)
    verb = torch.tensor(ids, dtype=torch.long, device=w.device)

    def override(module, args, logits):
        # the LM head's input is the final-normed hidden state; the verbalizer columns come from the trained rows
        rows = head(args[0]).to(logits.dtype)
        return logits.index_copy(-1, verb, rows)

    head.privtune_hook = out.register_forward_hook(override)
    return head


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
    # peft keeps target_modules as a set, so its order in the JSON follows the process's string hash seed: sort it,
    # so that the same run writes the same bytes (the pinned-output test compares them)
    conf = Path(folder) / "adapter_config.json"
    data = json.loads(conf.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        conf.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return True


def merged_model(sel: Selection) -> torch.nn.Module:
    """The selection's model as a plain transformers model: LoRA adapters merged into the base weights (in place:
    the selection is spent), any other kind as it is (its parameters were trained in place)."""
    if hasattr(sel.model, "merge_and_unload"):
        with no_checkpointing_notice():
            return sel.model.merge_and_unload()
    head = verbalizer_head(sel.model)
    if head is not None:  # the trained rows go into an LM head of its own: the (tied) embedding keeps its rows
        model = sel.model
        out = model.get_output_embeddings()
        untied = torch.nn.Linear(out.weight.shape[1], out.weight.shape[0], bias=False, device=out.weight.device,
                                 dtype=out.weight.dtype)
        with torch.no_grad():
            untied.weight.copy_(out.weight)
            untied.weight[torch.tensor(head.verbalizer_ids, device=out.weight.device)] = head.weight
        detach_head(model)
        model.set_output_embeddings(untied)
        model.config.tie_word_embeddings = False
        return model
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
