"""BBoxER ("Tuning without Peeking: Provable Generalization Bounds and Robust LLM Post-Training", arXiv 2507.01752):
comparison-only black-box post-training.

A few parameters are scaled multiplicatively, w = w₀·exp(x) (x = 0 is the base model, bit-exactly), and a nevergrad
optimizer searches x through ask/tell. Each candidate is scored on the whole scoring set (the task pool) inside a
`Scorer`; only the comparison outcome leaves it:
  comparison = "incumbent": one bit per step, "did the candidate beat the incumbent?" (the incumbent moves if so);
  comparison = "ranking":   one generation of λ candidates per step, released as their ranking: log₂(λ!) bits.
The optimizer's tell() receives values computed from those released bits alone (`Search`), so the output is a
deterministic function of the public seed and the bits: `privtune replay` rebuilds it bit-identically from the
transcript, and a union bound over ≤ 2^b outputs bounds its generalization gap (privtune.privacy.generalization).
This is a generalization bound, not differential privacy.

It has no learning rate, step size or batch (the ZO fields an older schema gave it are accepted and dropped);
train.steps is the budget b (evaluations, or generations with ranking).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import model_validator

from ..config import MethodCfg, PosFloat, PosInt
from ..errors import ConfigError
from ..privacy.bounds import mi_to_posterior
from ..privacy.generalization import bits_mi_bound, generalization_gap_bound, ranking_bits, released_bits
from ..zo.seeds import derive_seed
from ..zo.sums import headline, score
from .base import Delta, Method, Release, register

CMA_MAX_DIM = 2000  # full-covariance CMA stores d×d: above this, use diagonal_cma
MAX_DIM = 1_000_000  # a black-box search over more coordinates than this is hopeless (and nevergrad copies x often)


# BBoxER has no learning rate, but its transcript lines have always carried one (the default 1e-6 of the ZO fields
# it used to be given): kept in the `lr` slot so its transcripts stay byte-identical. Nothing reads it.
TRANSCRIPT_LR = 1e-6


class Config(MethodCfg):
    name: Literal["bboxer"] = "bboxer"
    unused: ClassVar[tuple[str, ...]] = ("lr", "eps", "weight_decay", "batch_size", "directions", "lr_schedule",
                                         "lr_power")
    optimizer: Literal["one_plus_one", "diagonal_cma", "cma", "de", "random"] = "one_plus_one"
    comparison: Literal["incumbent", "ranking"] = "incumbent"
    population: PosInt | None = None  # λ candidates per ranked generation (ranking only; default 8)
    sigma: PosFloat = 0.05  # initial mutation scale of x (w is scaled by ≈ exp(±sigma))
    # one x per entry, or one scalar per trainable tensor (kind norms + tensor = per-layer norm scalars)
    granularity: Literal["element", "tensor"] = "element"
    score: Literal["loss", "error"] = "loss"  # what decides a comparison: mean CE or 0-1 error on the scoring set
    delta: Delta = 0.05  # confidence of the reported generalization bound

    @model_validator(mode="after")
    def _population(self):
        if self.comparison == "incumbent" and self.population is not None:
            raise ValueError("method.population: only used with method.comparison=ranking (incumbent compares "
                             "one candidate per step)")
        if self.comparison == "ranking" and self.population is not None and self.population < 2:
            raise ValueError(f"method.population: a ranking needs at least 2 candidates, got {self.population}")
        return self

    @property
    def lam(self) -> int:
        return (self.population or 8) if self.comparison == "ranking" else 1


def make_optimizer(cfg: Config, dim: int, seed: int, budget: int):
    """A nevergrad optimizer over x ∈ ℝ^dim, x₀ = 0, seeded from the public run seed."""
    import nevergrad as ng

    param = ng.p.Array(init=np.zeros(dim)).set_mutation(sigma=cfg.sigma)
    param.random_state = np.random.RandomState(derive_seed(seed, 7) % 2**32)
    lam = cfg.lam if cfg.comparison == "ranking" else None
    if cfg.optimizer == "one_plus_one":
        family = ng.optimizers.OnePlusOne  # (1+1)-ES, one-fifth success rule on the step size
    elif cfg.optimizer in ("cma", "diagonal_cma"):
        family = ng.families.ParametrizedCMA(diagonal=cfg.optimizer == "diagonal_cma", popsize=lam)
    elif cfg.optimizer == "de":
        family = ng.families.DifferentialEvolution(popsize=lam or 30)
    else:
        family = ng.optimizers.RandomSearch
    return family(parametrization=param, budget=max(budget, 1), num_workers=1)


@contextlib.contextmanager
def _quiet_cma():
    """pycma warns about its own step-size bookkeeping (TPA, injected solutions) on rank-only feedback: not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"cma(\..*)?$")
        yield


class Search:
    """The public half: the optimizer and the incumbent, moved only by released bits / rankings."""

    def __init__(self, cfg: Config, dim: int, seed: int, total_steps: int):
        self.cfg = cfg
        self.opt = make_optimizer(cfg, dim, seed, total_steps * cfg.lam)
        self.x = np.zeros(dim)  # the incumbent = the run's output so far
        self.value = 0.0  # its told value: incumbent comparisons tell 0, −1, −2, ... to successive winners
        self.asked: list = []

    def ask(self) -> list[np.ndarray]:
        with _quiet_cma():
            self.asked = [self.opt.ask() for _ in range(self.cfg.lam)]
        return [np.asarray(c.value, dtype=np.float64) for c in self.asked]

    def tell(self, public: dict) -> None:
        """Tell the asked candidates values that are a function of the released outcome only."""
        with _quiet_cma():
            self._tell(public)

    def _tell(self, public: dict) -> None:
        if self.cfg.comparison == "incumbent":
            (cand,) = self.asked
            if int(public["bit"]):
                self.value -= 1.0
                self.x = np.asarray(cand.value, dtype=np.float64).copy()
                self.opt.tell(cand, self.value)
            else:
                self.opt.tell(cand, self.value + 1.0)
        else:
            order = [int(i) for i in public["ranking"]]
            for rank, i in enumerate(order):
                self.opt.tell(self.asked[i], float(rank))
            self.x = np.asarray(self.asked[order[0]].value, dtype=np.float64).copy()  # the generation's winner
        self.asked = []


class Scorer:
    """The private half: scores candidates on the whole scoring set and lets only comparisons out."""

    def __init__(self, write, engine, pool, score: str):
        self.write, self.engine, self.pool, self.score = write, engine, pool, score
        self._incumbent: float | None = None  # the incumbent's score: never leaves this object

    def _score(self, x: np.ndarray) -> float:
        self.write(x)
        if self.score != "loss" and self.engine.forward.task_type == "generation":  # 1 − F1 of greedy answers
            return 1.0 - score(self.engine, self.pool)["f1"]
        lg = self.engine.logits(self.pool)
        labels = self.pool.labels.to(lg.device)
        if self.score == "loss":
            return float(self.engine.forward.loss(lg.double(), labels, reduction="mean"))
        return float((lg.argmax(-1) != labels).double().mean())

    def beats(self, x: np.ndarray, incumbent: np.ndarray) -> int:
        """1 if x scores strictly better than the incumbent (which then becomes x), else 0."""
        if self._incumbent is None:  # first step, or after a resume: recomputed, never stored in the run dir
            self._incumbent = self._score(incumbent)
        s = self._score(x)
        if s < self._incumbent:
            self._incumbent = s
            return 1
        return 0

    def ranking(self, xs: list[np.ndarray]) -> list[int]:
        """Candidate indices best first; ties broken by index, so the outcome is one of λ! permutations."""
        scores = [self._score(x) for x in xs]
        return sorted(range(len(xs)), key=lambda i: (scores[i], i))

    def accuracy(self, x: np.ndarray) -> float:
        return 1.0 - Scorer(self.write, self.engine, self.pool, "error")._score(x)


class BBoxER(Method):
    name = "bboxer"
    display = "BBoxER"
    guarantee = "generalization bound"
    multi_process = False  # one scorer over the whole pool, not sharded across torchrun ranks

    def __init__(self, cfg, engine, pool, run_seed, total_steps, secret=None):
        super().__init__(cfg, engine, pool, run_seed, total_steps, secret)
        params = [p for _, p in engine.params]
        if any(not bool(torch.any(p != 0)) for p in params):
            raise ConfigError("trainable.kind: bboxer scales parameters as w·exp(x), and this trainable set has an "
                              "all-zero tensor (e.g. LoRA's B) that can never move; use final_norm, norms or "
                              "top_layers:K")
        self.params = params
        self.base = [p.detach().clone() for p in params]  # w₀ (the base model: constructed before any checkpoint)
        sizes = [p.numel() if cfg.granularity == "element" else 1 for p in params]
        self.slices = np.cumsum([0] + sizes)
        self.dim = int(self.slices[-1])
        if self.dim > MAX_DIM:
            raise ConfigError(f"trainable.kind: {self.dim} search dimensions is too many for a black-box search "
                              f"(max {MAX_DIM}); use final_norm, norms, or method.granularity=tensor")
        if cfg.optimizer == "cma" and self.dim > CMA_MAX_DIM:
            raise ConfigError(f"method.optimizer: cma keeps a {self.dim}×{self.dim} covariance; use diagonal_cma "
                              f"for more than {CMA_MAX_DIM} search dimensions")
        self.search = Search(cfg, self.dim, self.run_seed, self.total_steps)
        self.scorer = Scorer(self.write, engine, pool, cfg.score) if pool is not None else None

    @torch.no_grad()
    def write(self, x: np.ndarray) -> None:
        """θ ← w₀·exp(x), a deterministic function of x (replay relies on it being bit-identical)."""
        for k, (p, w0) in enumerate(zip(self.params, self.base)):
            xk = torch.from_numpy(np.ascontiguousarray(x[self.slices[k]:self.slices[k + 1]])).to(w0.device, w0.dtype)
            p.copy_(w0 * torch.exp(xk if self.cfg.granularity == "tensor" else xk.view_as(w0)))

    def step(self, t: int) -> Release:
        xs = self.search.ask()
        if self.cfg.comparison == "incumbent":
            public = {"bit": self.scorer.beats(xs[0], self.search.x)}
        else:
            public = {"ranking": self.scorer.ranking(xs)}
        self.write(self.search.x)  # θ back at the incumbent until the release is applied
        return Release(updates=[], public=public, charge=0.0)

    def lr_at(self, t: int) -> float:
        return TRANSCRIPT_LR

    def apply(self, rel: Release, lr: float) -> None:
        self.search.tell(rel.public)
        self.write(self.search.x)

    def _replay_lines(self, lines: list[dict]) -> None:
        for line in lines:
            self.search.ask()
            self.search.tell({k: line[k] for k in ("bit", "ranking") if k in line})
        self.write(self.search.x)

    def resume(self, step: int, transcript: list[dict]) -> None:
        self._replay_lines(transcript)

    @classmethod
    def replay(cls, cfg, setup, lines: list[dict], callback=None) -> None:
        """The output from the public seed and the released bits alone: no data is read."""
        method = cls(cfg.method, setup.engine, None, cfg.train.seed, cfg.train.steps)
        for n, line in enumerate(lines):
            method._replay_lines([line])
            if callback:
                callback({"event": "step", "step": n + 1, "steps": len(lines)})
        method.write(method.search.x)

    def bits(self, steps: int) -> float:
        return released_bits(steps, self.cfg.comparison, self.cfg.lam)

    def ledger_fields(self) -> dict:
        cfg = self.cfg
        return {**super().ledger_fields(), "comparison": cfg.comparison, "optimizer": cfg.optimizer,
                "population": cfg.lam, "bits_per_step": self.bits(1), "search_dim": self.dim,
                "scoring_examples": len(self.pool) if self.pool is not None else None}

    def summary(self, ledger_state: dict) -> dict:
        cfg = self.cfg
        steps = int(ledger_state.get("steps_done", 0))
        b = self.bits(steps)
        s = len(self.pool)
        mi = bits_mi_bound(b)
        per = "1 bit per incumbent comparison" if cfg.comparison == "incumbent" else \
            f"log2({cfg.lam}!) = {ranking_bits(cfg.lam):.4f} bits per ranked generation of {cfg.lam}"
        return {
            "guarantee": self.guarantee, "bits_released": b, "scoring_examples": s, "bound_delta": cfg.delta,
            "generalization_bound": generalization_gap_bound(b, s, cfg.delta),
            "bound_formula": "|R - R_hat| <= sqrt((b*ln2 + ln(2/delta)) / (2*s)) (Hoeffding + union bound over "
                             "<= 2^b outputs), for any loss in [0, 1] such as the 0-1 error",
            "mi_nats": mi, "epsilon": None, "delta": None, "mia_posterior_bound": mi_to_posterior(mi),
            "assumptions": (f"NOT differential privacy. The output is a deterministic function of the public seed "
                            f"and the b released bits ({per}), so it is one of at most 2^b models; with probability "
                            f">= 1 - delta over a scoring set of s examples drawn i.i.d. (here: the class-balanced "
                            f"task pool, so R is the risk under that distribution), every such model's risk is within "
                            f"the bound of its scoring-set risk. mi_nats = b*ln2 bounds I(data; output); it is "
                            f"vacuous (posterior 1) once b >= 1 bit"),
        }

    @classmethod
    def guarantee_line(cls, privacy: dict) -> str:
        # its mi_nats (b·ln 2) bounds the output's dependence on the scoring set, and is vacuous once b >= 1 bit:
        # the summary must not read as a privacy guarantee
        bound = privacy.get("generalization_bound")
        gap = "" if bound is None else f" (train − test gap ≤ {bound:.3g})"
        return f"generalization bound{gap}, not a privacy guarantee"

    def final_fields(self, final_eval: dict) -> dict:
        """The observed generalization gap of the output: scoring-set accuracy − eval accuracy (one aggregate
        number per set, released for reporting beyond the b bits)."""
        train_acc = self.scorer.accuracy(self.search.x)
        self.write(self.search.x)
        _, final = headline(final_eval)  # F1 for a generation task
        return {"scoring_accuracy": train_acc, "eval_accuracy": final, "observed_gap": train_acc - final}


register(Config, BBoxER)
