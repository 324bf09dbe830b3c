"""Model adapters: the only code that knows processors, chat templates, image tokens, normalisation
and KV caches. Importing this package registers the built-in white-box targets in `WHITEBOX_MODELS`.
"""

from medattack.models import embedded, llava  # noqa: F401 (registers)
from medattack.models.base import WHITEBOX_MODELS, AttackState, LossResult, WhiteBoxTarget, load_whitebox

__all__ = ["WHITEBOX_MODELS", "AttackState", "LossResult", "WhiteBoxTarget", "load_whitebox"]
