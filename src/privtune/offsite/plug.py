"""The model owner's side: put the returned adapter blocks into the full model (same names, same shapes)."""

from __future__ import annotations

import torch

from ..errors import PrivtuneError


def plug(model, state: dict[str, torch.Tensor], where: str = "adapters") -> dict[str, torch.Tensor]:
    """Copy `state` (full-model names) into `model`; returns the replaced tensors (to restore with plug again)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise PrivtuneError(f"{where}: {len(unknown)} tensors are not parameters of the full model (e.g. {unknown[0]})")
    for name, t in state.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise PrivtuneError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the full model's is "
                                f"{tuple(params[name].shape)}")
    old = {}
    with torch.no_grad():
        for name, t in state.items():
            old[name] = params[name].detach().clone()
            params[name].copy_(t.to(params[name].dtype))
    return old


def check_source(manifest_source: dict, identity: dict, where: str = "--model") -> None:
    """The full model must be the one the emulator was built from."""
    if manifest_source.get("sha256") != identity.get("sha256"):
        raise PrivtuneError(f"{where}: {identity.get('model')!r} is not the model the emulator was built from "
                            f"({manifest_source.get('model')!r}, sha256 {str(manifest_source.get('sha256'))[:12]}…)")
