"""Where the ZO engine's directions z come from (`train.z_kernel`): two backends, never mixed within a run.

* `torch` — z_i = torch.randn(p_i.shape) from a torch.Generator seeded derive_seed(seed, i), in p's dtype
  (`Direction.draw`). The engine materializes z (and keeps it between the ± passes and the update when small).
  The default on CPU; bit-for-bit what the engine always did.
* `triton` — fused Triton kernels: z is generated in registers by Philox and never exists in memory.
  `perturbed(p, seed, i, scale)` writes p + scale·z to a new tensor (the just-in-time perturbed weight) and
  `axpy_(p, seed, i, alpha, wd_factor)` does p ← wd_factor·p + alpha·z in place (the update). One read of p and
  one write per call instead of randn + add kernels and a z-sized buffer.

The triton z (a pure function of seed, i and p's element count; `draw` returns it for tests and for methods that
need z itself): Philox-4x32-10 as in Triton's `tl.randn(key, counter)` with
  key     = derive_seed(seed, i): 63 bits, split by Triton into its low and high 32-bit words;
  counter = (element index in row-major order: low 32 bits, high 32 bits, 0, 0);
  z       = Box–Muller (cos branch) of the first two 32-bit outputs, in float32.
So z does not depend on the kernel's block size or grid. The arithmetic is float32 whatever p's dtype (fp16/bf16
are loaded, computed in fp32, rounded once on store). z differs from the torch backend's z, so a run records its
resolved backend (run dir `engine.json`) and resume / replay refuse to continue on another one.

Selection: `auto` is triton when the engine's device is CUDA and triton imports, else torch. `triton` on a CPU
device is allowed only under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported; tests only —
it is slow).
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from .seeds import Direction, derive_seed

KERNELS = ("auto", "torch", "triton")
GPU_BLOCK = 1024  # elements per program on a GPU
INTERP_BLOCK = 1 << 16  # the interpreter runs a program as numpy arrays: bigger blocks, fewer programs


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET, read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return str(triton.__version__)


def _triton_missing(device: torch.device) -> str | None:
    """Why the triton backend cannot run on `device` here (None when it can)."""
    if device.type != "cuda" and not interpreting():
        return (f"needs a CUDA device (the model runs on {device.type}); on CPU it runs only in Triton's "
                "interpreter (TRITON_INTERPRET=1, for tests)")
    if triton_version() is None:
        return "needs the triton package (pip install triton)"
    return None


def resolve(name: str, device: torch.device | str, field: str = "train.z_kernel", recorded_in: str | None = None
            ) -> str:
    """auto | torch | triton → the backend a run uses (torch | triton), or a ConfigError naming `field`.
    `recorded_in`: the file a run recorded its backend in (resume, replay), named in the error."""
    device = torch.device(device)
    if name not in KERNELS:
        raise ConfigError(f"{field}: {name!r} is not one of {', '.join(KERNELS)}")
    if name == "torch":
        return "torch"
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_version() is not None else "torch"
    why = _triton_missing(device)
    if why is not None:
        if recorded_in is not None:
            raise ConfigError(f"{field}: the run used the 'triton' z kernel ({recorded_in}), which {why}; z differs "
                              "between kernels, so the run cannot go on (or be replayed) with another one")
        raise ConfigError(f"{field}: 'triton' {why}")
    return "triton"


def backend(name: str):
    """The backend object for a resolved name."""
    return {"torch": TorchZ, "triton": TritonZ}[name]()


# --------------------------------------------------------------------------------------------------------- torch
class TorchZ:
    """Today's z: a torch.Generator per (seed, i). The engine keeps its z bank and update order for this backend;
    perturbed / axpy_ are the reference formulas the fused kernels implement."""

    name = "torch"
    fused = False

    @staticmethod
    def draw(seed: int, i: int, p: torch.Tensor) -> torch.Tensor:
        return Direction.draw(seed, i, p)

    def perturbed(self, p: torch.Tensor, seed: int, i: int, scale: float) -> torch.Tensor:
        return torch.add(p.detach(), self.draw(seed, i, p), alpha=float(scale))

    @torch.no_grad()
    def axpy_(self, p: torch.Tensor, seed: int, i: int, alpha: float, wd_factor: float = 1.0) -> torch.Tensor:
        if wd_factor != 1.0:
            p.mul_(float(wd_factor))
        return p.add_(self.draw(seed, i, p), alpha=float(alpha))


# -------------------------------------------------------------------------------------------------------- triton
_KERNELS = None


def _kernels():
    """Build the Triton kernels on first use, so TRITON_INTERPRET is read when a kernel is first needed."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def draw_kernel(out_ptr, n, seed, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.randn(seed, offs), mask=offs < n)

    @triton.jit
    def perturbed_kernel(p_ptr, out_ptr, n, seed, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
        v = p + scale * tl.randn(seed, offs)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def axpy_kernel(p_ptr, n, seed, alpha, wd_factor, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
        v = p * wd_factor + alpha * tl.randn(seed, offs)
        tl.store(p_ptr + offs, v.to(p_ptr.dtype.element_ty), mask=mask)

    _KERNELS = (triton, draw_kernel, perturbed_kernel, axpy_kernel)
    return _KERNELS


class TritonZ:
    """Fused z: generated in registers, never stored (see the module docstring for the exact definition)."""

    name = "triton"
    fused = True

    @staticmethod
    def _launch(kernel, n: int, device: torch.device, *args, block: int | None = None) -> None:
        triton = _kernels()[0]
        if n == 0:
            return
        if block is None:
            block = min(INTERP_BLOCK, triton.next_power_of_2(n)) if interpreting() else GPU_BLOCK
        grid = (triton.cdiv(n, block),)
        if device.type == "cuda":
            with torch.cuda.device(device):
                kernel[grid](*args, BLOCK=block)
        else:
            kernel[grid](*args, BLOCK=block)

    def draw(self, seed: int, i: int, p: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """z_i as the kernels generate it: float32, p's shape, on p's device."""
        out = torch.empty(p.shape, dtype=torch.float32, device=p.device)
        self._launch(_kernels()[1], out.numel(), out.device, out, out.numel(), derive_seed(seed, i), block=block)
        return out

    def perturbed(self, p: torch.Tensor, seed: int, i: int, scale: float) -> torch.Tensor:
        """p + scale·z_i as a new tensor (p untouched), computed in float32 and stored in p's dtype."""
        src = p.detach().contiguous()
        out = torch.empty_like(src, memory_format=torch.contiguous_format)
        self._launch(_kernels()[2], src.numel(), src.device, src, out, src.numel(), derive_seed(seed, i),
                     float(scale))
        return out

    @torch.no_grad()
    def axpy_(self, p: torch.Tensor, seed: int, i: int, alpha: float, wd_factor: float = 1.0) -> torch.Tensor:
        """p ← wd_factor·p + alpha·z_i in place (float32 arithmetic, one rounding to p's dtype)."""
        if not p.is_contiguous():
            raise ValueError("axpy_: the parameter must be contiguous")
        self._launch(_kernels()[3], p.numel(), p.device, p.detach(), p.numel(), derive_seed(seed, i), float(alpha),
                     float(wd_factor))
        return p
