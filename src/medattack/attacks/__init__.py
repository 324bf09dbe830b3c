"""White-box attacks, one technique per file. Importing this package registers them in `ATTACKS`."""

from medattack.attacks import direct, gcg, mcm, occlusion, pgd, region, typo  # noqa: F401 (registers)
from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, StepRecord

__all__ = ["ATTACKS", "AttackResult", "AttackTask", "StepRecord"]
