"""Emulators for offsite-tuning: the full model's first and last n blocks (the adapters, kept exactly) around a
compressed middle. Two builders, compared at the same emulator size (parameter count):

* uniform-drop — Offsite-Tuning (Xiao, Lin & Han 2023, §3.2 layer drop, without distillation): keep every k-th
  middle block, drop the rest.
* gradot — GradOT (Yao et al. 2025): keep every middle block; compress its attention projections by Dynamic Rank
  Decomposition (DRD: keep the SVD components with the highest GCS, a top fraction of the rank always kept; rank
  chosen per projection) and its MLP by Selective Channel Pruning (SCP: keep the channels with the highest GCS),
  each to (1 − ratio) of its parameters. GCS: gcs.py.

An emulator folder holds emulator.safetensors, manifest.json (what was kept, ratios, seed, options, the source
model's identity and the emulator's HF config: a pure function of the inputs, byte for byte), tokenizer/ (HF
models) and build.json (build time; kept out of the manifest).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_task
from ..errors import ConfigError, PrivtuneError
from ..models import HashCodec, HFCodec, LoadedModel, load_model
from ..atomic import atomic_save_tensors, atomic_write_text, fsync_dir, load_tensors
from . import forward as FW
from . import distill as D
from . import gcs as GCS

FORMAT = "privtune-offsite-emulator/1"
METHODS = ("uniform-drop", "gradot")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
MANIFEST, WEIGHTS, BUILD, TOKENIZER = "manifest.json", "emulator.safetensors", "build.json", "tokenizer"


class LowRankLinear(nn.Module):
    """W ≈ b @ a (b = U_r·diag(σ_r), a = V_rᵀ): a DRD-compressed projection."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.a = nn.Parameter(torch.zeros(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x):
        return F.linear(F.linear(x, self.a), self.b)


@dataclass
class BuildOptions:
    method: str = "uniform-drop"
    adapters: int = 2  # n: the first n and last n blocks are the adapters
    ratio: float = 0.5  # fraction of the middle's parameters removed
    task: str = "sst2"  # gradot: calibration examples come from this task's train split
    calib: int = 32
    lam: float = 0.5  # GCS λ (dimensionless: both terms normalised)
    keep_top: float = 0.05  # DRD: this top fraction of each projection's rank is always kept
    seed: int = 0
    micro_batch: int = 8
    distill: "D.DistillOptions | None" = None  # train the middle to match the full middle (Offsite-Tuning §3.3)


def check_options(opt: BuildOptions, n_layers: int) -> None:
    if opt.method not in METHODS:
        raise ConfigError(f"--method: {opt.method!r} is not one of {', '.join(METHODS)}")
    if isinstance(opt.adapters, bool) or not isinstance(opt.adapters, int) or opt.adapters < 1:
        raise ConfigError(f"--adapters: must be an integer >= 1, got {opt.adapters!r}")
    if 2 * opt.adapters >= n_layers:
        raise ConfigError(f"--adapters: {opt.adapters} first + {opt.adapters} last blocks leave no middle in a "
                          f"{n_layers}-block model")
    if not (isinstance(opt.ratio, (int, float)) and 0.0 <= opt.ratio < 1.0):
        raise ConfigError(f"--ratio: must be in [0, 1), got {opt.ratio!r}")
    if not 0.0 <= opt.keep_top <= 1.0:
        raise ConfigError(f"--keep-top: must be in [0, 1], got {opt.keep_top!r}")
    if opt.lam < 0 or not math.isfinite(opt.lam):
        raise ConfigError(f"--lam: must be a finite number >= 0, got {opt.lam!r}")
    if opt.calib < 1:
        raise ConfigError(f"--calib: must be >= 1, got {opt.calib!r}")
    if opt.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {opt.seed!r}")
    if opt.distill is not None:
        D.check_options(opt.distill)


# ------------------------------------------------------------------------------------------------ identity
def model_identity(lm: LoadedModel) -> dict:
    """Name, n_params and sha256 over the state dict (names, shapes, dtypes, bytes in name order)."""
    h = hashlib.sha256()
    n = 0
    for name, t in sorted(lm.model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    n = sum(p.numel() for p in lm.model.parameters())
    return {"model": lm.name, "params": int(n), "sha256": h.hexdigest()}


def n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))  # tied embeddings counted once


def block_params(layer) -> int:
    return int(sum(p.numel() for p in layer.parameters()))


# ------------------------------------------------------------------------------------------------ skeleton
def _config_dict(config, n_blocks: int) -> dict:
    d = config.to_dict()
    d["num_hidden_layers"] = n_blocks
    if isinstance(d.get("layer_types"), list):
        d["layer_types"] = d["layer_types"][:n_blocks]
    for k in ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype", "id2label",
              "label2id"):
        d.pop(k, None)
    return d


def skeleton(config: dict, blocks: list[dict]) -> nn.Module:
    """An HF causal LM with the emulator's block structure (weights unset): DRD projections are LowRankLinear,
    SCP MLPs have fewer channels."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    cfg_obj = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    cfg_obj._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg_obj, dtype=torch.float32)
    for layer, spec in zip(model.model.layers, blocks):
        attn, mlp = layer.self_attn, layer.mlp
        for proj, r in (spec.get("ranks") or {}).items():
            old = getattr(attn, proj)
            setattr(attn, proj, LowRankLinear(old.in_features, old.out_features, int(r)))
        if spec.get("channels") is not None:
            c = len(spec["channels"])
            d_in, d_ff = mlp.gate_proj.in_features, mlp.gate_proj.out_features
            mlp.gate_proj = nn.Linear(d_in, c, bias=mlp.gate_proj.bias is not None)
            mlp.up_proj = nn.Linear(d_in, c, bias=mlp.up_proj.bias is not None)
            mlp.down_proj = nn.Linear(c, mlp.down_proj.out_features, bias=mlp.down_proj.bias is not None)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = int(spec["index"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _state(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # tied: saved once, as the embedding
    return sd


def _fill(model, state: dict[str, torch.Tensor], where: str) -> None:
    want = _state(model)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise PrivtuneError(f"{where}: weights do not match the manifest (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise PrivtuneError(f"{where}: tensor {k} has shape {tuple(state[k].shape)}, manifest says {tuple(v.shape)}")
    model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


# ------------------------------------------------------------------------------------------------ planning
def uniform_keep(n_layers: int, n_adapt: int, ratio: float) -> list[int]:
    """Middle blocks kept by uniform drop: every k-th, (1 − ratio) of them (rounded), evenly spaced."""
    mid = list(range(n_adapt, n_layers - n_adapt))
    n_keep = int(round((1.0 - ratio) * len(mid)))
    return [mid[(i * len(mid)) // n_keep] for i in range(n_keep)] if n_keep else []


def _lowrank_cost(m: int, n: int, r: int) -> int:
    """Parameters of a projection at rank r: low-rank factors while cheaper than dense, else dense (all kept)."""
    return r * (m + n) if r * (m + n) < m * n else m * n


def drd_plan(weights: dict[str, torch.Tensor], stats: dict[str, GCS.LinearStats], ratio: float, lam: float,
             keep_top: float) -> dict[str, list[int] | None]:
    """DRD for one block's attention: SVD components to keep per projection (None = dense, unchanged).

    Candidates (all components but the top ⌈keep_top·rank⌉ of each projection) are dropped in order of GCS per
    parameter saved until the attention's parameters are ≤ (1 − ratio) of dense. A projection whose kept rank is
    not cheaper as factors than dense stays dense with every component."""
    if ratio <= 0:
        return {p: None for p in weights}
    dims, cands = {}, []
    all_h, all_l, owners = [], [], []
    for p, W in weights.items():
        m, n = W.shape
        _, S, _, hess, lin = GCS.svd_terms(W, stats[p])
        dims[p] = (m, n, len(S))
        protect = min(len(S), max(1, math.ceil(keep_top * len(S))))
        for k in range(protect, len(S)):
            all_h.append(hess[k]); all_l.append(lin[k]); owners.append((p, k))
    budget = (1.0 - ratio) * sum(m * n for m, n, _ in dims.values())
    if owners:
        score = GCS.gcs(torch.stack(all_h), torch.stack(all_l), lam)
        per_param = score / torch.tensor([float(sum(dims[p][:2])) for p, _ in owners], dtype=score.dtype)
        order = sorted(range(len(owners)), key=lambda i: (float(per_param[i]), owners[i]))
    else:
        order = []
    rank = {p: r for p, (_, _, r) in dims.items()}
    dropped = {p: set() for p in weights}

    def cost():
        return sum(_lowrank_cost(m, n, rank[p]) for p, (m, n, _) in dims.items())

    for i in order:
        if cost() <= budget:
            break
        p, k = owners[i]
        dropped[p].add(k)
        rank[p] -= 1
    if cost() > budget:
        raise ConfigError(f"--ratio: {ratio} cannot be met by DRD with --keep-top {keep_top} "
                          f"(attention still has {cost()} > {int(budget)} parameters)")
    plan = {}
    for p, (m, n, r_full) in dims.items():
        lowrank = rank[p] * (m + n) < m * n
        plan[p] = sorted(set(range(r_full)) - dropped[p]) if lowrank else None
    return plan


def scp_plan(mlp: dict[str, torch.Tensor], stats: dict[str, GCS.LinearStats], ratio: float,
             lam: float) -> list[int] | None:
    """SCP for one block's MLP: channels kept (the ⌊(1 − ratio)·d_ff⌋ with the highest GCS), None = all."""
    if ratio <= 0:
        return None
    hess, lin = GCS.channel_terms(mlp["gate_proj"], mlp["up_proj"], mlp["down_proj"], stats["gate_proj"],
                                  stats["up_proj"], stats["down_proj"])
    score = GCS.gcs(hess, lin, lam)
    n_keep = max(1, int(math.floor((1.0 - ratio) * len(score))))
    order = sorted(range(len(score)), key=lambda c: (-float(score[c]), c))  # highest GCS: costliest to drop
    return sorted(order[:n_keep])


# ------------------------------------------------------------------------------------------------ building
def _calibration(lm: LoadedModel, opt: BuildOptions):
    task = load_task(opt.task)
    if not task.train:
        raise ConfigError(f"--task: {opt.task} has no train split (eval only); calibrate GradOT on a task with one")
    rng = np.random.default_rng([int(opt.seed), 7])  # tag 7: apart from the tuning pool's draws
    if opt.calib > len(task.train):
        raise ConfigError(f"--calib: {opt.calib} is more than the {len(task.train)} training examples")
    idx = sorted(int(i) for i in rng.choice(len(task.train), size=opt.calib, replace=False))
    return FW.task_examples(lm.codec, task, [task.train[i] for i in idx]), idx


def _linear_weight(mod) -> torch.Tensor:
    return mod.weight.detach()


def build(lm: LoadedModel, opt: BuildOptions, callback=None,
          measured: dict | None = None) -> tuple[nn.Module, dict, dict[str, torch.Tensor]]:
    """(emulator model, manifest, emulator state) built from the full model `lm` (not modified). What is measured
    while building (the distillation fit) goes into `measured`, kept out of the reproducible manifest."""
    layers = lm.model.model.layers
    L = len(layers)
    check_options(opt, L)
    n = opt.adapters
    first, last = list(range(n)), list(range(L - n, L))
    emit = callback or (lambda ev: None)
    blocks: list[dict] = []
    extra: dict = {}
    extra_build = measured if measured is not None else {}
    if opt.method == "uniform-drop":
        kept_mid = uniform_keep(L, n, opt.ratio)
        for src in first + kept_mid + last:
            blocks.append({"source": src, "role": "adapter" if src in first or src in last else "middle"})
    else:
        calib, idx = _calibration(lm, opt)
        extra = {"calibration": {"task": opt.task, "split": "train", "examples": len(idx),
                                 "indices_sha256": hashlib.sha256(",".join(map(str, idx)).encode()).hexdigest()}}
        mods = {}
        for li in range(n, L - n):
            for p in ATTN:
                mods[f"{li}.{p}"] = getattr(layers[li].self_attn, p)
            for p in MLP:
                mods[f"{li}.{p}"] = getattr(layers[li].mlp, p)
        emit({"event": "status", "message": f"K-FAC statistics on {len(calib)} calibration examples"})
        stats = GCS.kfac_stats_on(lm.model, mods, calib, opt.micro_batch)
        for src in first:
            blocks.append({"source": src, "role": "adapter"})
        for li in range(n, L - n):
            attn_w = {p: _linear_weight(getattr(layers[li].self_attn, p)) for p in ATTN}
            mlp_w = {p: _linear_weight(getattr(layers[li].mlp, p)) for p in MLP}
            drd = drd_plan(attn_w, {p: stats[f"{li}.{p}"] for p in ATTN}, opt.ratio, opt.lam, opt.keep_top)
            scp = scp_plan(mlp_w, {p: stats[f"{li}.{p}"] for p in MLP}, opt.ratio, opt.lam)
            spec = {"source": li, "role": "middle"}
            kept = {p: k for p, k in drd.items() if k is not None}
            if kept:
                spec["ranks"] = {p: len(k) for p, k in kept.items()}
                spec["components"] = kept
            if scp is not None:
                spec["channels"] = scp
            blocks.append(spec)
            emit({"event": "status", "message": f"block {li}: ranks {spec.get('ranks', 'dense')}, "
                                                f"channels {len(scp) if scp is not None else 'all'}"})
        for src in last:
            blocks.append({"source": src, "role": "adapter"})
        del stats
    for i, b in enumerate(blocks):
        b["index"] = i
    config = _config_dict(lm.model.config, len(blocks))
    emu = skeleton(config, blocks)
    _copy_weights(lm.model, emu, blocks)
    if opt.distill is not None:
        fit = D.distill(lm.model, emu, n, [b["index"] for b in blocks if b["role"] == "middle"], lm.codec,
                        opt.distill, callback)
        extra["distill"] = {"corpus": fit["corpus"], "options": fit["options"], "texts_used": fit["texts_used"]}
        extra_build["distill_held_out_nmse"] = fit["held_out_nmse"]
    ident = model_identity(lm)
    mid_full = sum(block_params(layers[i]) for i in range(n, L - n))
    mid_emu = sum(block_params(emu.model.layers[b["index"]]) for b in blocks if b["role"] == "middle")
    manifest = {
        "format": FORMAT,
        "method": opt.method,
        "source": ident,
        "options": {"adapters": n, "ratio": opt.ratio, "seed": opt.seed,
                    **({"task": opt.task, "calib": opt.calib, "lam": opt.lam, "keep_top": opt.keep_top}
                       if opt.method == "gradot" else {})},
        **extra,
        "adapters": {"first": first, "last": last},
        "params": {"emulator": n_params(emu), "full": ident["params"], "middle_emulator": mid_emu,
                   "middle_full": mid_full, "middle_ratio_kept": round(mid_emu / mid_full, 6)},
        "codec": _codec_info(lm),
        "config": config,
        "blocks": [{k: b[k] for k in ("index", "source", "role", "ranks", "channels", "components") if k in b}
                   for b in blocks],
    }
    return emu, json.loads(manifest_bytes(manifest)), _state(emu)  # as it reads back from disk


def _copy_weights(full, emu, blocks: list[dict]) -> None:
    """Embedding, final norm, head and kept blocks from `full`; DRD/SCP blocks get their compressed weights."""
    with torch.no_grad():
        emu.model.embed_tokens.weight.copy_(full.model.embed_tokens.weight)
        emu.model.norm.weight.copy_(full.model.norm.weight)
        if not getattr(emu.config, "tie_word_embeddings", False):
            emu.lm_head.weight.copy_(full.lm_head.weight)
        for b in blocks:
            src, dst = full.model.layers[b["source"]], emu.model.layers[b["index"]]
            ranks, channels = b.get("components") or {}, b.get("channels")
            for name, t in dst.state_dict().items():
                top, _, rest = name.partition(".")
                proj = rest.split(".")[0]
                if top == "self_attn" and proj in ranks:
                    W = getattr(src.self_attn, proj).weight.double()
                    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
                    k = torch.tensor(ranks[proj])
                    value = (U[:, k] * S[k]) if rest.endswith(".b") else Vh[k]
                elif top == "mlp" and channels is not None:
                    c = torch.tensor(channels)
                    W = src.state_dict()[name]
                    if proj == "down_proj":
                        value = W[:, c] if W.ndim == 2 else W  # down's bias lives on the model dim
                    else:
                        value = W[c]
                else:
                    value = src.state_dict()[name]
                t.copy_(value.to(t.dtype))


def _codec_info(lm: LoadedModel) -> dict:
    if isinstance(lm.codec, HashCodec):
        return {"kind": "hash", "vocab_size": lm.codec.vocab_size}
    return {"kind": "hf", "path": TOKENIZER}


# ------------------------------------------------------------------------------------------------ folder i/o
def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


def save(out: Path, lm: LoadedModel, manifest: dict, state: dict[str, torch.Tensor], build_info: dict) -> None:
    """Write the emulator folder atomically: a temp dir renamed into place (no half-written emulator)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PrivtuneError(f"--out: {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        atomic_save_tensors(tmp / WEIGHTS, state, metadata={"format": FORMAT})
        if isinstance(lm.codec, HFCodec):
            lm.codec.tok.save_pretrained(tmp / TOKENIZER)
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
        atomic_write_text(tmp / BUILD, json.dumps(build_info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_folder(model: str, opt: BuildOptions, out: Path, callback=None) -> dict:
    """privtune offsite build: load the full model, build, save. Returns the build summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrivtuneError(f"--out: {out} exists and is not an empty folder")
    lm = load_model(model)
    check_options(opt, len(lm.model.model.layers))
    t0 = time.perf_counter()
    measured: dict = {}
    emu, manifest, state = build(lm, opt, callback, measured)
    seconds = time.perf_counter() - t0
    info = {"build_seconds": round(seconds, 3), **measured, "emulator_params": manifest["params"]["emulator"],
            "emulator_mb": round(sum(t.numel() * t.element_size() for t in state.values()) / 2**20, 3)}
    save(out, lm, manifest, state, info)
    return {"out": str(out), "method": opt.method, **info, "params": manifest["params"]}


def load_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise PrivtuneError(f"{path}: missing; --emulator must be a folder written by privtune offsite build")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrivtuneError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise PrivtuneError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def load(folder: Path) -> tuple[LoadedModel, dict]:
    """(emulator as a LoadedModel, manifest) from an emulator folder."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    if not (folder / WEIGHTS).is_file():
        raise PrivtuneError(f"{folder / WEIGHTS}: missing")
    model = skeleton(manifest["config"], manifest["blocks"])
    _fill(model, load_tensors(folder / WEIGHTS), str(folder / WEIGHTS))
    codec_info = manifest["codec"]
    if codec_info["kind"] == "hash":
        codec = HashCodec(int(codec_info["vocab_size"]))
    else:
        from transformers import AutoTokenizer

        codec = HFCodec(AutoTokenizer.from_pretrained(folder / codec_info["path"], local_files_only=True))
    return LoadedModel(model, codec, f"emulator:{folder}"), manifest
