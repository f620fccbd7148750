"""samsp: SAM-SP ("Self-Prompting Makes SAM Great Again", arXiv 2408.12364) for batch segmentation.

The public model API: build a SAM, wrap it in ``SamSP``, fine-tune with ``samsp_loss``, export a
bundle, predict tiles, segment a whole image (``segment_file``). ``samsp.metrics``,
``samsp.preprocess`` and ``samsp.predict`` are modules.

The names below load on first use (PEP 562), not on ``import samsp``: the torch-free modules
(``samsp.contract_check``, ``samsp.sliding_window``, ``samsp.bundle_names``, ``samsp.errors``) are
imported by job drivers and CLIs that must not pay torch's seconds of import -- nor import it
before ``OMP_WAIT_POLICY`` is set (jobs/inference/model_preload.py) -- just for reaching them.
"""
from importlib import import_module

from .sam_package import defer_package_init

defer_package_init()  # before anything imports segment_anything.modeling (see sam_package)

# public name -> the submodule defining it
_SOURCES = {
    "build": ("build_sam", "build_sam_from_config"),
    "bundle": ("Bundle", "BundleMeta", "load_bundle", "save_bundle"),
    "bundle_names": ("resolve_bundle",),
    "checkpoint": ("read_state_dict",),
    "config": ("SAM_CONFIGS", "SamConfig", "get_config"),
    "contract": ("InputContract",),
    "errors": ("BundleError", "BundleNotFoundError", "CheckpointError", "ContractError",
               "SamspError", "SegmentError"),
    "lora": ("FINETUNE_MODES", "apply_lora", "configure_finetune", "has_lora", "merge_lora"),
    "loss": ("LossParts", "samsp_loss"),
    "model": ("SamSP", "SamSPOutput", "logit_of"),
    "prompts": ("PROMPT_KINDS", "mask_to_box", "mask_to_points"),
    "segment": ("SegmentResult", "segment_file"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}
_MODULES = ("metrics", "predict", "preprocess")

__all__ = sorted([*_MODULES, *_WHERE])


def __getattr__(name: str):
    """A public name's submodule is imported on first access; any submodule by its name."""
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    elif not name.startswith("_"):
        try:
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports does not
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
