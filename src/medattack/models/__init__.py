"""Model adapters: the only code that knows processors, chat templates, image tokens, normalisation
and KV caches. White-box models register in `WHITEBOX_MODELS`, black-box target kinds in `TARGETS`
(both loaded from this package on first use).
"""

from medattack.models.base import WHITEBOX_MODELS, AttackState, LossResult, WhiteBoxTarget, load_whitebox

__all__ = ["WHITEBOX_MODELS", "AttackState", "LossResult", "WhiteBoxTarget", "load_whitebox"]
