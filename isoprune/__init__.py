"""isoprune: isomorphic structural pruning for vision models.

    import timm, isoprune
    model = timm.create_model("deit_base_distilled_patch16_224")
    isoprune.prune(model, isoprune.Ratios(emb=0.5, heads=0.5, head_dim=0.25, mlp=0.5))
    isoprune.save(model, "pruned/deit_s")
    isoprune.finetune("pruned/deit_s", data="/imagenet", epochs=300)
    isoprune.pretrain("deit_small_patch16_224", data="/imagenet", tokens="simprune", keep_rate=0.8)  # DINO

The names below are imported on first use: torch and timm take seconds to import, and
``isoprune --help`` or a mistyped flag should not wait for them.
"""
from importlib import import_module as _import_module

__version__ = "0.1.0"

_EXPORTS = {  # public name -> (module, its name there)
    "IsopruneError": ("_errors", "IsopruneError"),
    "Ratios": ("_plan", "Ratios"),
    "Budget": ("_plan", "Budget"),
    "Timing": ("_latency", "Timing"),
    "DepthPlan": ("_depth", "DepthPlan"),
    "PruningPlan": ("_plan", "PruningPlan"),
    "GroupPlan": ("_plan", "GroupPlan"),
    "Group": ("_groups", "Group"),
    "IsomorphicGroup": ("_groups", "IsomorphicGroup"),
    "Importance": ("_importance", "Importance"),
    "register_importance": ("_importance", "register_importance"),
    "available_importances": ("_importance", "available_importances"),
    "plan": ("_plan", "plan"),
    "apply_plan": ("_apply", "apply_plan"),
    "prune": ("_apply", "prune"),
    "zero_out": ("_apply", "zero_out"),
    "recalibrate_bn": ("_recalibrate", "recalibrate_bn"),
    "isomorphic_groups": ("_api", "isomorphic_groups"),
    "count": ("_api", "count"),
    "create_model": ("_models", "create"),
    "save": ("_io", "save"),
    "load": ("_io", "load"),
    "finetune": ("_finetune", "run"),
    "evaluate": ("_eval", "run"),
    "pretrain": ("_ssl", "run"),
    "tokens": ("tokens", None),
    "ALIASES": ("_models", "ALIASES"),
    "SCOPES": ("_recipes", "SCOPES"),
    "LABELS": ("_groups", "LABELS"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isoprune' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    found = _import_module(f".{module}", __name__)
    value = found if attr is None else getattr(found, attr)
    globals()[name] = value  # once: later look-ups find it as a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
