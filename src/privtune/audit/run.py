"""`privtune audit`: membership-inference attacks and the one-run canary audit on a finished run → audit.json.

Members and non-members follow the run's threat model:
- DP and non-private runs: the training pool versus held-out examples of the same distribution, drawn the way the
  pool was (data.draw_pool): for classification a draw of train-split examples outside the pool with the members'
  label mix; for multiple choice and generation a uniform draw (their labels are answer positions, or all 0, not
  classes). The DP guarantee covers exactly this game. An eval-only task (openbookqa) has no pool: refused.
- PACZero: its guarantee covers membership in the secret subset S_J among the pool (prior ½), and J is forgotten
  when the run ends. Audit mode: a run trained with a fixed secret (PRIVTUNE_SECRET_SEED) is audited with the same
  seed (`secret_seed`), so members are S_J and non-members the rest of the pool. Without it the audit falls back to
  pool versus held-out, which the PAC guarantee does not cover: the numbers are reported, not checked.
  With the secret known the audit also runs an exact test of "the model is independent of J" (ZPL's I = 0): the
  AUC of S_J against the AUCs of all M public candidate subsets (subset_rank_p_value).
- Canaries (`task.canaries` at train time, run dir canaries.json): each was put in the pool with probability ½; the
  one-run audit (onerun.py) turns the guesses into an ε lower bound at 95% confidence.
- The ref attack's reference is the base model, or an attacker's shadow run (`reference`, reference_state): the same
  model, task and trainable set trained on another pool draw.

A measured posterior success above the proven bound, or a TPR at 1% FPR above the proven (ε, δ) trade-off curve, or a
canary ε above the proven ε, each beyond its confidence bound, is a violation: audit.json says so (`violation: true`)
and the CLI exits 1. All these tests share one family-wise false-alarm rate `alpha` (5%, metrics.audit_checks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import methods as M
from ..atomic import load_tensors
from ..errors import ConfigError, PrivtuneError
from ..methods.base import POOL_VS_HELDOUT, SECRET_SUBSET
from ..run.keystore import SecretKey
from ..run.rundir import RunDir
from ..run.setup import prepare
from . import metrics, onerun
from .attacks import ATTACKS, scores


def _load_run(run: RunDir):
    weights = run.final_weights()
    privacy = json.loads(run.privacy.read_text()) if run.privacy.is_file() else {}
    return run.load_config(), weights, privacy


def _heldout(train, exclude: set[int], labels_wanted: list[int], seed: int) -> list[int]:
    """Train-split indices outside `exclude`, one per wanted label (same label mix as the members), seeded."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13]))
    by_label: dict[int, list[int]] = {}
    for i, ex in enumerate(train):
        if i not in exclude:
            by_label.setdefault(ex.label, []).append(i)
    out = []
    for lab in sorted(set(labels_wanted)):
        need = labels_wanted.count(lab)
        avail = by_label.get(lab, [])
        if need > len(avail):
            raise PrivtuneError(f"audit: only {len(avail)} held-out examples of label {lab} for {need} members")
        out.extend(avail[j] for j in rng.choice(len(avail), size=need, replace=False))
    return out


def subset_rank_p_value(scores: np.ndarray, design_rows: np.ndarray, j: int) -> float | None:
    """Exact test of "the model is independent of J" (PACZero-ZPL: I = 0): the AUC of the true subset S_J against
    the AUCs of all M candidate subsets on the same scores. Under independence J is uniform given the scores, so the
    rank of its AUC is uniform: p = #{m : AUC_m ≥ AUC_J} / M."""
    aucs = []
    for m in range(design_rows.shape[1]):
        inside = design_rows[:, m]
        if not (inside.any() and (~inside).any()):
            return None
        aucs.append(metrics.auc(scores[inside], scores[~inside]))
    aucs = np.array(aucs)
    return float(np.mean(aucs >= aucs[j]))


def _heldout_uniform(n_train: int, exclude: set[int], need: int, seed: int) -> list[int]:
    """`need` train-split indices outside `exclude`, uniform without replacement, seeded: the held-out draw of a
    task whose pool is a uniform sample (data.draw_pool for multiple choice and generation)."""
    avail = [i for i in range(n_train) if i not in exclude]
    if need > len(avail):
        raise PrivtuneError(f"audit: only {len(avail)} held-out training examples for {need} members; the pool "
                            "(task.pool_size) takes too much of the train split to leave an equal held-out set")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13]))
    return [avail[j] for j in rng.choice(len(avail), size=need, replace=False)]


def heldout_membership(task, pool_index: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Pool versus held-out: (members, non-members) as train-split indices (canaries excluded)."""
    members = list(pool_index)
    if task.type != "classification":
        return members, _heldout_uniform(len(task.train), set(pool_index), len(members), seed)
    return members, _heldout(task.train, set(pool_index), [task.train[i].label for i in members], seed)


def training_pool(cfg, task) -> list[int]:
    """The run's training pool (canaries excluded) as train-split indices, drawn exactly as training drew it
    (run.setup.prepare: data.draw_pool, label-balanced for classification, uniform for the other types)."""
    from ..data import draw_pool

    if not task.train:  # openbookqa: nothing was trained on, so there are no members to tell apart
        raise ConfigError(f"task.name: {cfg.task.name} has no train split (eval only), so the run has no training "
                          "pool to audit")
    return draw_pool(task, cfg.task.pool_size, cfg.train.seed)


def canary_examples(record: dict, task) -> list:
    """The canaries as training used them (run.setup.add_canaries), rebuilt from the run dir's canaries.json:
    classification: text and label; multiple choice and generation also their choices or answers and the template
    fields the prompt is rendered from. A record that does not fit the run's task is refused (its scores would
    mean nothing)."""
    from ..data import Example

    kind = record.get("type", "classification")  # files written before task types hold classification canaries
    if kind != task.type:
        raise PrivtuneError(f"canaries.json: holds {kind} canaries but the run's task is {task.type}")
    texts, labels = record["texts"], record["labels"]
    if kind == "classification":
        return [Example(t, int(y)) for t, y in zip(texts, labels)]
    if record.get("prompt_template") != task.template:
        raise PrivtuneError("canaries.json: its prompt_template is not the run's task.template; the canaries "
                            "would be scored under a prompt training never used")
    fields = [tuple((str(k), str(v)) for k, v in f) for f in record["fields"]]
    if kind == "multiple_choice":
        return [Example(t, int(y), choices=tuple(c), fields=f)
                for t, y, c, f in zip(texts, labels, record["choices"], fields)]
    return [Example(t, int(y), answers=tuple(a), fields=f) for t, y, a, f in zip(texts, labels, record["answers"],
                                                                                   fields)]


# Task fields a shadow run may differ in: which and how many examples it drew, and how much of the eval set it scored.
SHADOW_FREE = {"pool_size", "canaries", "eval_limit"}


def reference_state(reference, cfg) -> dict:
    """The trained weights of an attacker's shadow run (`privtune audit --reference`): the audited run's recipe (model,
    task, trainable set) trained on other data. The ref attack then asks how much more confident the audited model is
    than a model that did the same training without the example; the base model, the default reference, also carries
    the fine-tuning's general gain, which hides a memorising run's members among well-classified non-members."""
    ref = RunDir.open(reference)
    rcfg = ref.load_config()
    task, rtask = cfg.task.model_dump(), rcfg.task.model_dump()
    pairs = [("model.name", cfg.model.name, rcfg.model.name),
             *((f"task.{k}", v, rtask[k]) for k, v in task.items() if k not in SHADOW_FREE),
             ("trainable", cfg.trainable.model_dump(), rcfg.trainable.model_dump())]
    for field, mine, theirs in pairs:
        if mine != theirs:
            raise ConfigError(f"--reference: {ref.path} has another {field} ({theirs!r}, the audited run "
                              f"{mine!r}); a shadow run repeats the audited run's model, task and trainable set")
    if rcfg.train.seed == cfg.train.seed:  # the pool is drawn from train.seed: the same seed, the same examples
        raise ConfigError(f"--reference: {ref.path} drew the audited run's own pool (train.seed {cfg.train.seed}); a "
                          "shadow run is trained on other data (another train.seed)")
    return load_tensors(ref.final_weights())  # same trainable set ⇒ same tensors (load_trainable_state checks)


def _subsample(idx: list[int], limit: int | None, rng) -> list[int]:
    if limit is None or len(idx) <= limit:
        return list(idx)
    return [idx[j] for j in sorted(rng.choice(len(idx), size=limit, replace=False))]


def bound_check(covered: str, threat_model: str, privacy: dict) -> tuple[float | None, bool]:
    """(posterior bound, whether it covers this threat model): it does when the audit plays the game the method's
    guarantee is about (`covered`, Method.threat_model)."""
    bound = privacy.get("mia_posterior_bound")
    if bound is None:
        return None, False
    return float(bound), threat_model == covered


def audit_run(run_dir, *, attacks=ATTACKS, limit: int | None = 500, n_boot: int = 200, seed: int = 0,
              secret_seed: int | None = None, reference=None, callback=None) -> dict:
    """Run the attacks (and the canary audit, if the run has canaries) and write run_dir/audit.json. `reference`: a
    shadow run dir the ref attack calibrates against (reference_state), instead of the base model."""
    from ..privacy.bounds import tradeoff_tpr
    from ..trainable import trainable_state

    run = RunDir.open(run_dir)
    attacks = tuple(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ConfigError(f"attacks: unknown {unknown} (choose from {', '.join(ATTACKS)})")
    cfg, weights, privacy = _load_run(run)
    method = M.method_class(cfg.method.name)
    if secret_seed is not None and method.threat_model != SECRET_SUBSET:
        have = " / ".join(m.display for m in M.method_classes() if m.threat_model == SECRET_SUBSET)
        raise ConfigError(f"secret_seed: only {have} runs have a secret subset to audit (this is {cfg.method.name})")
    canary = None
    if cfg.task.canaries:
        path = run.canaries
        if not path.is_file():
            raise PrivtuneError(f"{path}: missing; the run was trained with task.canaries but has no canary file")
        canary = json.loads(path.read_text())

    if callback:
        callback({"event": "status", "message": "loading the model and the task"})
    shadow_state = None if reference is None else reference_state(reference, cfg)  # a bad shadow fails before loading
    setup = prepare(cfg, need_pool=False, need_eval=False)
    pool_index = training_pool(cfg, setup.task)
    ref_state = trainable_state(setup.sel) if shadow_state is None else shadow_state
    trained_state = load_tensors(weights)
    canary_in = [bool(x) for x in canary["included"]] if canary else []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    design = in_s = None
    if secret_seed is not None:
        # the design and J exactly as the run drew them from the same secret (the method's own derivation)
        design, j_secret = method.secret_subset(cfg.method, cfg.train.seed, len(pool_index) + sum(canary_in),
                                                SecretKey(secret_seed))
        in_s = design[:, j_secret]
        # subsample pool positions before splitting by S_J, so the scored set does not depend on J
        keep_pos = _subsample(list(range(len(pool_index))), None if limit is None else 2 * limit, rng)
        members = [pool_index[p] for p in keep_pos if in_s[p]]
        nonmembers = [pool_index[p] for p in keep_pos if not in_s[p]]
        threat = SECRET_SUBSET
    else:
        members, nonmembers = heldout_membership(setup.task, pool_index, seed)
        threat = POOL_VS_HELDOUT
        members, nonmembers = _subsample(members, limit, rng), _subsample(nonmembers, limit, rng)
    examples = [setup.task.train[i] for i in members + nonmembers]
    canary_ex = canary_examples(canary, setup.task) if canary else []
    if canary and in_s is not None:  # only the canaries in the pool; "member" = in S_J (pool order: after the pool)
        keep = [c for c, inc in enumerate(canary_in) if inc]
        canary_ex = [canary_ex[c] for c in keep]
        canary_in = [bool(x) for x in in_s[len(pool_index):]]
    if callback:
        callback({"event": "status", "message": f"scoring {len(examples) + len(canary_ex)} examples "
                                                f"with {', '.join(attacks)}"})
    sc = scores(setup, examples + canary_ex, ref_state, trained_state, attacks,
                micro_batch=min(16, cfg.train.micro_batch))  # full-vocabulary logits: keep chunks small
    n_m, n_x = len(members), len(members) + len(nonmembers)

    guarantee = privacy.get("guarantee")
    bound, applies = bound_check(method.threat_model, threat, privacy)
    dp_eps, dp_delta = privacy.get("epsilon"), privacy.get("delta")
    dp = dp_eps is not None and math.isfinite(float(dp_eps))  # ε = ∞ (no noise) leaves nothing to check
    canary_checked = bool(canary_ex) and dp and threat == POOL_VS_HELDOUT
    # One family-wise α for every test that can raise a violation (metrics.audit_checks says how it is split): the
    # posterior and TPR checks per attack, and the canary audit per attack when it is checked.
    checks = metrics.audit_checks({a: (sc[a][:n_m], sc[a][n_m:n_x]) for a in attacks},
                                  posterior_bound=bound if applies else None,
                                  epsilon=float(dp_eps) if applies and dp else None, delta=float(dp_delta or 0.0),
                                  other_tests=len(attacks) if canary_checked else 0, n_boot=n_boot, seed=seed)
    result = {"run_dir": str(run.path), "method": cfg.method.name, "guarantee": guarantee, "threat_model": threat,
              "mia_posterior_bound": bound, "bound_applies": applies, "alpha": checks["alpha"],
              "n_tests": checks["n_tests"], "check_confidence": 1.0 - checks["alpha_per_test"],
              "n_members": n_m, "n_nonmembers": n_x - n_m,
              "reference": "base model" if reference is None else str(Path(reference).resolve()),
              "attacks": {}, "violation": False,
              "violations": list(checks["violations"])}
    if dp_eps is not None:
        result["tpr_at_0.01_fpr_bound"] = float(tradeoff_tpr(0.01, float(dp_eps), float(dp_delta or 0.0)))
    for name in attacks:
        s = sc[name]
        m = metrics.mia_metrics(s[:n_m], s[n_m:n_x], n_boot=n_boot, seed=seed)
        result["attacks"][name] = {**m, **checks["attacks"][name]}
    if design is not None:  # exact permutation test over the M candidate subsets (valid under I = 0)
        where = {i: p for p, i in enumerate(pool_index)}
        rows = design[[where[i] for i in members + nonmembers]]
        result["subset_rank_p_value"] = {a: subset_rank_p_value(sc[a][:n_x], rows, j_secret) for a in attacks}
        if canary_ex:
            crow = design[len(pool_index):]
            result["canary_subset_rank_p_value"] = {a: subset_rank_p_value(sc[a][n_x:], crow, j_secret)
                                                    for a in attacks}
    if canary_ex:
        delta = float(dp_delta) if dp_delta is not None else 0.0
        # checked: each attack at the family's per-test level; else at α/attacks, so the best still holds at 1 − α
        a_canary = checks["alpha_per_test"] if canary_checked else checks["alpha"] / len(attacks)
        per = {name: onerun.audit(sc[name][n_x:], canary_in, delta=delta, confidence=1.0 - a_canary)
               for name in attacks}
        best = max(per, key=lambda a: per[a]["epsilon_lower_bound"])
        result["canary"] = {"threat_model": SECRET_SUBSET if threat == SECRET_SUBSET else "pool-inclusion",
                            "canaries": len(canary_ex), "included": int(sum(canary_in)), "delta": delta,
                            "confidence": 1.0 - len(attacks) * a_canary,  # of the best of the attacks
                            "epsilon_lower_bound": per[best]["epsilon_lower_bound"],
                            "best_attack": best, "per_attack": per, "valid": threat != SECRET_SUBSET,
                            "auc": {a: metrics.auc(sc[a][n_x:][np.array(canary_in)], sc[a][n_x:][~np.array(canary_in)])
                                    for a in attacks} if 0 < sum(canary_in) < len(canary_in) else None}
        if canary_checked and per[best]["epsilon_lower_bound"] > float(dp_eps):
            result["violations"].append(f"canaries: ε lower bound {per[best]['epsilon_lower_bound']:.4f} exceeds the "
                                        f"proven ε {float(dp_eps):.4f}")
        if threat == SECRET_SUBSET:
            # Given the public design, S_J membership of the canaries is one of M columns, not independent coins:
            # the one-run theorem's premise fails, so this ε is shown but not claimed; the exact test is
            # canary_subset_rank_p_value.
            result["canary"]["note"] = ("not a valid bound here: S_J membership is not independent across canaries "
                                        "given the public design; see canary_subset_rank_p_value")
    result["violation"] = bool(result["violations"])
    best_auc = max(attacks, key=lambda a: result["attacks"][a]["auc"])
    result["summary"] = {"best_attack": best_auc, "auc": result["attacks"][best_auc]["auc"],
                         "tpr_at_0.01_fpr": max(result["attacks"][a]["tpr_at_0.01_fpr"] for a in attacks),
                         "posterior_success": max(result["attacks"][a]["posterior_success"] for a in attacks),
                         "epsilon_lower_bound": (result["canary"]["epsilon_lower_bound"]
                                                 if result.get("canary", {}).get("valid") else None)}
    run.write_record(run.audit, result)
    return result
