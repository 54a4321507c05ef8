"""Empirical privacy audits: membership-inference attacks (attacks.py), their metrics (metrics.py), the one-run canary
audit (onerun.py) and the run-dir driver that writes audit.json beside the proven bound (run.py)."""

from privtune.audit.attacks import ATTACKS
from privtune.audit.run import audit_run

__all__ = ["ATTACKS", "audit_run"]
