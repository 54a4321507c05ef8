#!/usr/bin/env python
"""Crash/resume soak test: SIGKILL a PACZero-MI training at random instants, resume it each time, check the ledger.

    python scripts/soak_resume.py [--kills N] [--steps T] [--seed S] [--workdir DIR] [--keep] [--strict]

A reference run (uninterrupted) and the soak run use the same config (configs/tiny_paczero_mi.yaml with small
overrides), the same PRIVTUNE_SECRET_SEED (so J and the noise are the same) and a keystore private to the work dir
(PRIVTUNE_CACHE=<workdir>/cache*). The soak run is `python -m privtune train -c ... out_dir=... [--resume]` in a
subprocess, killed with SIGKILL N times: at random delays, and right after privacy.json or state/state.json changes
(to land inside ledger writes, private-state writes and checkpoint saves). After every kill it is resumed (started
afresh when the kill came before the run dir existed). If a run completes before N kills, a new round starts in a
new run dir.

Checked at every observation (privacy.json is read whenever it changes, and after every kill):
  privacy.json parses; `spent` never decreases and never exceeds the budget; `spent` equals the sum of
  `charged_nats` over transcript lines up to `last_charged_step` (the transcript may lag the ledger by one step: then
  the pair is checked against the final transcript); the transcript is steps 0..n-1 with no gap or duplicate;
  after a kill: config.yaml and every JSONL line parse (a torn last line is allowed) and state/state.json points
  at an existing weights file no later than the ledger.
Checked at the end of every round, against the uninterrupted run:
  model/trainable.safetensors bit-identical, transcript.jsonl identical, privacy.json identical but for run_id;
  every resume succeeds, including one killed after the final checkpoint.
Reported as warnings (fatal with --strict): metrics.jsonl rows that differ, privacy.json's mi_nats lagging `spent`,
temp files or secret keys left behind.

Exit 0 and one JSON line on stdout on success; exit 1 and a JSON line with "reason" otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_paczero_mi.yaml"
BUDGET_SLACK = 1e-12  # privtune.run.ledger.BUDGET_SLACK
POLL_S = 0.001
MODES = (("delay", 0.4), ("ledger", 0.25), ("checkpoint", 0.2), ("state", 0.15))


class SoakFailure(Exception):
    pass


def read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """Rows of a JSONL file read while it may be appended to: a last line without newline is torn, not an error."""
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()], keep != raw


def seq_sum(values) -> float:
    total = 0.0
    for v in values:
        total = total + float(v)  # the ledger's order of additions: bit-exact comparison is fair
    return total


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.workdir)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.overrides = [f"train.steps={args.steps}", f"train.checkpoint_every={args.checkpoint_every}",
                          "train.log_every=5", "task.pool_size=32", "task.eval_limit=16", "method.subsets=8",
                          "train.micro_batch=32"]
        self.checks = 0
        self.observations = 0
        self.kills = 0
        self.invocations = 0
        self.rounds = 0
        self.kill_modes: dict[str, int] = {}
        self.kill_phases: dict[str, int] = {}
        self.warnings: list[str] = []
        self.lagging_summary = 0  # observations where privacy.json's mi_nats != spent
        self.startup_s = 4.0  # spawn → first ledger charge (updated from observations)
        self.step_s = 0.05
        self.seen: dict[Path, dict] = {}  # per run dir: last spent / lcs, and every (lcs, spent) pair observed

    # --------------------------------------------------------------------------------------------- helpers
    def env(self, cache: Path) -> dict:
        env = dict(os.environ)
        env.update(PRIVTUNE_SECRET_SEED=str(7_000_001 + self.args.seed), PRIVTUNE_CACHE=str(cache),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same thread count everywhere: same floats
        return env

    def command(self, run: Path, resume: bool) -> list[str]:
        if resume:  # the config comes from the run dir (privtune refuses overrides with --resume)
            return [sys.executable, "-m", "privtune", "train", f"out_dir={run}", "-q", "--resume"]
        return [sys.executable, "-m", "privtune", "train", "-c", str(CONFIG), *self.overrides, f"out_dir={run}", "-q"]

    def check(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            raise SoakFailure(what)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    # ----------------------------------------------------------------------------------------- observation
    def observe(self, run: Path, quiescent: bool) -> dict | None:
        """Check privacy.json against the transcript; returns the ledger (None before the run dir exists)."""
        p = run / "privacy.json"
        if not p.exists():
            self.check(not run.exists() or not quiescent, f"{run} exists without privacy.json")
            return None
        self.observations += 1
        try:
            led = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SoakFailure(f"{p} does not parse: {e}") from None
        self.check(isinstance(led, dict) and {"spent", "last_charged_step", "steps_done", "budget"} <= set(led),
                   f"{p}: missing fields")
        spent, lcs, budget = float(led["spent"]), int(led["last_charged_step"]), float(led["budget"])
        seen = self.seen.setdefault(run, {"spent": 0.0, "lcs": -1, "pairs": set()})
        self.check(spent >= seen["spent"], f"{p}: spent went down from {seen['spent']!r} to {spent!r}")
        self.check(lcs >= seen["lcs"], f"{p}: last_charged_step went down from {seen['lcs']} to {lcs}")
        self.check(spent <= budget + BUDGET_SLACK, f"{p}: spent {spent!r} exceeds the budget {budget!r}")
        self.check(int(led["steps_done"]) == lcs + 1, f"{p}: steps_done {led['steps_done']} != last_charged_step + 1")
        seen.update(spent=spent, lcs=lcs)
        if "mi_nats" in led and led["mi_nats"] != spent:
            self.lagging_summary += 1
        seen["pairs"].add((lcs, spent))

        rows, _torn = read_jsonl(run / "transcript.jsonl")  # read after the ledger: it may only be further on
        steps = [int(r["step"]) for r in rows]
        self.check(steps == list(range(len(steps))), f"{run}/transcript.jsonl: steps are not 0..n-1 ({steps[-5:]})")
        if quiescent:
            self.check(len(rows) in (lcs, lcs + 1),
                       f"{run}: transcript has {len(rows)} lines but the ledger charged steps 0..{lcs}")
        else:
            self.check(len(rows) >= lcs, f"{run}: transcript has {len(rows)} lines, ledger charged steps 0..{lcs}")
        if len(rows) >= lcs + 1:
            total = seq_sum(r["charged_nats"] for r in rows[: lcs + 1])
            self.check(total == spent, f"{p}: spent {spent!r} != sum of charged_nats up to step {lcs} ({total!r})")
        else:  # the transcript lags by the one step being written: that pair is checked at the end of the round
            total = seq_sum(r["charged_nats"] for r in rows)
            self.check(spent >= total, f"{p}: spent {spent!r} < transcript charges {total!r}")
        return led

    def inspect_quiescent(self, run: Path) -> dict | None:
        """After a kill: everything in the run dir must be readable."""
        led = self.observe(run, quiescent=True)
        if led is None:
            return None
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        self.check(isinstance(cfg, dict) and cfg.get("train", {}).get("steps") == self.args.steps,
                   f"{run}/config.yaml unreadable")
        read_jsonl(run / "metrics.jsonl")
        st_path = run / "state" / "state.json"
        if st_path.exists():
            st = json.loads(st_path.read_text())
            self.check((run / "state" / st["weights"]).is_file(), f"{st_path} points at a missing file")
            self.check(int(st["step"]) <= int(led["last_charged_step"]) + 1,
                       f"{st_path}: checkpoint step {st['step']} is ahead of the ledger")
        if (run / "eval.json").exists():
            json.loads((run / "eval.json").read_text())
        return led

    # ---------------------------------------------------------------------------------------------- killing
    def plan(self) -> dict:
        r, acc = self.rng.random(), 0.0
        for mode, w in MODES:
            acc += w
            if r < acc:
                break
        if mode == "delay":
            if self.rng.random() < 0.25:  # during start-up, possibly before the run dir exists
                at = self.rng.uniform(0.0, self.startup_s)
            else:
                at = self.startup_s + self.rng.uniform(0.0, self.args.steps * self.step_s)
            return {"mode": mode, "at": at}
        if mode == "ledger":
            return {"mode": mode, "nth": self.rng.randint(1, 2 * self.args.checkpoint_every + 2),
                    "jitter": self.rng.uniform(0.0, 0.003)}
        if mode == "checkpoint":  # a ledger update that is not a charge: the checkpoint (or the final) summary
            return {"mode": mode, "nth": self.rng.randint(1, 3), "jitter": self.rng.uniform(0.0, 0.015)}
        return {"mode": mode, "nth": self.rng.randint(1, 3), "jitter": self.rng.uniform(0.0, 0.002)}

    def invoke(self, run: Path, cache: Path, resume: bool, plan: dict | None) -> tuple[int, bool]:
        """Run one `privtune train` (killing it per `plan`); returns (returncode, killed_by_us)."""
        self.invocations += 1
        n = self.invocations
        with open(self.logs / f"{n:03d}.out", "wb") as out, open(self.logs / f"{n:03d}.err", "wb") as err:
            proc = subprocess.Popen(self.command(run, resume), cwd=REPO, env=self.env(cache), stdout=out, stderr=err)
            t0 = time.monotonic()
            files = {"privacy": run / "privacy.json", "state": run / "state" / "state.json"}
            sig = {k: self._sig(p) for k, p in files.items()}
            events = {"privacy": 0, "checkpoint": 0, "state": 0}
            lcs_prev, first_charge, deadline, sent = None, None, None, False
            while proc.poll() is None:
                now = time.monotonic() - t0
                for k, p in files.items():
                    s = self._sig(p)
                    if s == sig[k] or s is None:
                        continue
                    sig[k] = s
                    if k == "state":
                        events["state"] += 1
                        continue
                    led = self.observe(run, quiescent=False)
                    if led is None:
                        continue
                    events["privacy"] += 1
                    lcs = int(led["last_charged_step"])
                    if lcs_prev is not None and lcs == lcs_prev:
                        events["checkpoint"] += 1
                    if first_charge is None:
                        first_charge = now
                    lcs_prev = lcs
                if plan is not None and deadline is None:
                    mode = plan["mode"]
                    if mode == "delay":
                        deadline = plan["at"]
                    else:
                        key = "privacy" if mode == "ledger" else mode
                        if events[key] >= plan["nth"]:
                            deadline = now + plan["jitter"]
                if deadline is not None and now >= deadline and not sent:
                    proc.send_signal(signal.SIGKILL)  # no-op if it has just exited by itself
                    sent = True
                if now > self.args.timeout:
                    proc.kill()
                    proc.wait()
                    raise SoakFailure(f"invocation {n} ran over {self.args.timeout} s (logs in {self.logs})")
                time.sleep(POLL_S)
            rc = proc.wait()
        if first_charge is not None:
            self.startup_s = 0.7 * self.startup_s + 0.3 * first_charge
        if lcs_prev is not None and first_charge is not None and events["privacy"] > 3:
            self.step_s = max(0.005, (time.monotonic() - t0 - first_charge) / max(events["privacy"], 1))
        return rc, sent and rc == -signal.SIGKILL

    @staticmethod
    def _sig(path: Path):
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def stderr_line(self) -> str:
        text = (self.logs / f"{self.invocations:03d}.err").read_text(errors="replace").strip().splitlines()
        return text[-1] if text else ""

    # ------------------------------------------------------------------------------------------------ rounds
    def soak_round(self, run: Path, cache: Path) -> str:
        """Kill/resume one run until it completes. Returns 'complete'."""
        self.rounds += 1
        while True:
            resume = (run / "config.yaml").is_file()
            plan = self.plan() if self.kills < self.args.kills else None
            rc, killed = self.invoke(run, cache, resume, plan)
            if killed:
                self.kills += 1
                self.kill_modes[plan["mode"]] = self.kill_modes.get(plan["mode"], 0) + 1
                led = self.inspect_quiescent(run)
                if led is None:
                    phase = "before_run_dir"
                elif (run / "eval.json").exists():
                    phase = "after_completion"
                elif int(led["steps_done"]) >= self.args.steps:
                    phase = "finalising"
                else:
                    phase = "training"
                self.kill_phases[phase] = self.kill_phases.get(phase, 0) + 1
                if phase == "after_completion":
                    return "complete"
                continue
            if rc == 0:
                self.inspect_quiescent(run)
                return "complete"
            line = self.stderr_line()
            self.inspect_quiescent(run)
            raise SoakFailure(f"invocation {self.invocations} ({'resume' if resume else 'fresh'}) exited {rc}: "
                              f"{line} (logs in {self.logs})")

    def compare(self, run: Path, ref: Path, result: str) -> None:
        for rel in ("model/trainable.safetensors", "transcript.jsonl"):
            a, b = (ref / rel).read_bytes(), (run / rel).read_bytes()
            if a != b and rel.endswith(".safetensors"):
                from safetensors.numpy import load_file

                ta, tb = load_file(str(ref / rel)), load_file(str(run / rel))
                bad = sorted(k for k in ta if k not in tb or not (ta[k] == tb[k]).all() or ta[k].dtype != tb[k].dtype)
                raise SoakFailure(f"{run}/{rel}: weights differ from the uninterrupted run ({bad[:3]} ...)")
            self.check(a == b, f"{run}/{rel} differs from the uninterrupted run's")
        la = json.loads((ref / "privacy.json").read_text())
        lb = json.loads((run / "privacy.json").read_text())
        self.check(lb["spent"] == la["spent"], f"{run}: spent {lb['spent']!r} != uninterrupted {la['spent']!r}")
        diff = sorted(k for k in set(la) | set(lb) if k != "run_id" and la.get(k) != lb.get(k))
        self.check(not diff, f"{run}/privacy.json differs from the uninterrupted run's in {diff}")
        rows, _ = read_jsonl(run / "transcript.jsonl")
        for lcs, spent in sorted(self.seen.get(run, {}).get("pairs", ())):
            total = seq_sum(r["charged_nats"] for r in rows[: lcs + 1])
            self.check(total == spent, f"{run}: observed spent {spent!r} at step {lcs} != transcript sum {total!r}")
        strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
        ma, mb = strip(read_jsonl(ref / "metrics.jsonl")[0]), strip(read_jsonl(run / "metrics.jsonl")[0])
        if ma != mb:
            missing = sorted({r["step"] for r in ma} - {r["step"] for r in mb})
            self.warn(f"metrics.jsonl differs from the uninterrupted run's after a resume (missing steps {missing})")
        if (run / "eval.json").exists():
            ea, eb = (json.loads((d / "eval.json").read_text()) for d in (ref, run))
            if ea.get("accuracy") != eb.get("accuracy"):
                self.warn("eval.json accuracy differs from the uninterrupted run's")

    def leftovers(self, runs: list[Path], cache: Path) -> None:
        def listing(folder: Path) -> list[Path]:
            return sorted(folder.iterdir()) if folder.exists() else []

        temps = [p for r in runs if r.exists() for p in r.rglob(".*")] + list(self.work.glob(".run-*"))
        temps += [p for sub in ("secrets", "private") for p in listing(cache / sub) if p.name.startswith(".")]
        if temps:
            self.warn(f"temp files left behind by killed writes: {len(temps)} "
                      f"(e.g. {temps[0].relative_to(self.work)})")
        keys = [p for p in listing(cache / "secrets") if not p.name.startswith(".")]
        if keys:
            self.warn(f"secret keys left in the keystore: {len(keys)} (runs killed before their run dir existed "
                      "or after the final checkpoint)")
        private = [p for p in listing(cache / "private") if not p.name.startswith(".")]
        if private:
            self.warn(f"private resume state left in the cache: {len(private)} file(s)")

    def main(self) -> dict:
        t0 = time.monotonic()
        ref = self.work / "ref"
        ref_cmd = self.command(ref, False)
        ref_log = open(self.logs / "ref.err", "wb")
        ref_proc = subprocess.Popen(ref_cmd, cwd=REPO, env=self.env(self.work / "cache-ref"),
                                    stdout=subprocess.DEVNULL, stderr=ref_log)
        cache = self.work / "cache"
        runs, results = [], []
        try:
            while True:
                run = self.work / f"run-{len(runs)}"
                runs.append(run)
                results.append(self.soak_round(run, cache))
                if self.kills >= self.args.kills:
                    break
            rc = ref_proc.wait(timeout=self.args.timeout)
        finally:
            if ref_proc.poll() is None:
                ref_proc.kill()
                ref_proc.wait()
            ref_log.close()
        if rc != 0:
            raise SoakFailure(f"the uninterrupted run failed (exit {rc}): see {self.logs / 'ref.err'}")
        self.observe(ref, quiescent=True)
        for run, result in zip(runs, results):
            self.compare(run, ref, result)
        self.leftovers(runs, cache)
        if self.lagging_summary:
            self.warn(f"privacy.json's mi_nats/mia_posterior_bound lag `spent` between checkpoints "
                      f"({self.lagging_summary} of {self.observations} observations)")
        return {"ok": True, "kills_requested": self.args.kills, "kills_survived": self.kills, "rounds": self.rounds,
                "invocations": self.invocations, "observations": self.observations, "checks": self.checks,
                "kill_modes": self.kill_modes, "kill_phases": self.kill_phases, "warnings": self.warnings,
                "spent": json.loads((ref / "privacy.json").read_text())["spent"], "steps": self.args.steps,
                "seconds": round(time.monotonic() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive (default 20)")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    ap.add_argument("--checkpoint-every", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill instants and PRIVTUNE_SECRET_SEED")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir, removed on success")
    ap.add_argument("--keep", action="store_true", help="keep the work dir on success")
    ap.add_argument("--strict", action="store_true", help="warnings are failures")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per invocation")
    args = ap.parse_args(argv)
    if args.kills < 0 or args.steps < 1 or args.checkpoint_every < 1:
        ap.error("--kills must be >= 0, --steps and --checkpoint-every >= 1")
    made = args.workdir is None
    if made:
        args.workdir = Path(tempfile.mkdtemp(prefix="privtune-soak-"))
    elif args.workdir.exists() and any(args.workdir.iterdir()):
        ap.error(f"--workdir {args.workdir} is not empty")
    soak = Soak(args)
    try:
        summary = soak.main()
        if args.strict and summary["warnings"]:
            raise SoakFailure("warnings with --strict: " + "; ".join(summary["warnings"]))
    except SoakFailure as e:
        print(json.dumps({"ok": False, "reason": str(e), "kills_survived": soak.kills, "checks": soak.checks,
                          "workdir": str(args.workdir)}))
        print(f"soak_resume: FAIL: {e}", file=sys.stderr)
        return 1
    if made and not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    else:
        summary["workdir"] = str(args.workdir)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
