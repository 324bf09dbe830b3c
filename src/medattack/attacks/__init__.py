"""White-box attacks, one technique per file; each registers itself in `ATTACKS` (loaded on first use)."""

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, StepRecord

__all__ = ["ATTACKS", "AttackResult", "AttackTask", "StepRecord"]
