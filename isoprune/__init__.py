"""isoprune: isomorphic structural pruning for vision models.

    import timm, isoprune
    model = timm.create_model("deit_base_distilled_patch16_224")
    isoprune.prune(model, isoprune.Ratios(emb=0.5, heads=0.5, head_dim=0.25, mlp=0.5))
    isoprune.save(model, "pruned/deit_s")
    isoprune.finetune("pruned/deit_s", data="/imagenet", epochs=300)
    isoprune.pretrain("deit_small_patch16_224", data="/imagenet", tokens="simprune", keep_rate=0.8)  # DINO
"""
__version__ = "0.1.0"

from ._errors import IsopruneError
from ._groups import LABELS, Group, IsomorphicGroup
from ._importance import Importance, available_importances, register_importance
from ._plan import SCOPES, Budget, GroupPlan, PruningPlan, Ratios, plan
from ._depth import DepthPlan
from ._latency import Timing
from ._apply import apply_plan, prune, zero_out
from ._recalibrate import recalibrate_bn
from ._api import count, isomorphic_groups
from ._models import ALIASES
from ._models import create as create_model
from ._io import load, save
from ._finetune import run as finetune
from ._eval import run as evaluate
from ._ssl import run as pretrain
from . import tokens

__all__ = [
    "IsopruneError",
    "Ratios",
    "Budget",
    "Timing",
    "DepthPlan",
    "PruningPlan",
    "GroupPlan",
    "Group",
    "IsomorphicGroup",
    "Importance",
    "register_importance",
    "available_importances",
    "plan",
    "apply_plan",
    "prune",
    "zero_out",
    "recalibrate_bn",
    "isomorphic_groups",
    "count",
    "create_model",
    "save",
    "load",
    "finetune",
    "evaluate",
    "pretrain",
    "tokens",
    "ALIASES",
    "SCOPES",
    "LABELS",
]
