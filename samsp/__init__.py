"""samsp: SAM-SP ("Self-Prompting Makes SAM Great Again", arXiv 2408.12364) for batch segmentation.

The public model API: build a SAM, wrap it in ``SamSP``, fine-tune with ``samsp_loss``, export a
bundle, predict tiles. ``samsp.metrics``, ``samsp.preprocess`` and ``samsp.predict`` are modules.
"""
from .sam_package import defer_package_init

defer_package_init()  # before anything imports segment_anything.modeling (see sam_package)

from . import metrics, predict, preprocess  # noqa: E402
from .build import build_sam, build_sam_from_config
from .bundle import Bundle, BundleMeta, load_bundle, save_bundle
from .checkpoint import read_state_dict
from .config import SAM_CONFIGS, SamConfig, get_config
from .contract import InputContract
from .errors import BundleError, CheckpointError, SamspError
from .lora import FINETUNE_MODES, apply_lora, configure_finetune, has_lora, merge_lora
from .loss import LossParts, samsp_loss
from .model import SamSP, SamSPOutput, logit_of
from .prompts import PROMPT_KINDS, mask_to_box, mask_to_points

__all__ = [
    "metrics", "predict", "preprocess",
    "SAM_CONFIGS", "FINETUNE_MODES", "PROMPT_KINDS",
    "Bundle", "BundleError", "BundleMeta", "CheckpointError", "InputContract", "LossParts",
    "SamConfig", "SamSP", "SamSPOutput", "SamspError",
    "apply_lora", "build_sam", "build_sam_from_config", "configure_finetune", "get_config",
    "has_lora", "load_bundle", "logit_of", "mask_to_box", "mask_to_points", "merge_lora", "read_state_dict",
    "samsp_loss", "save_bundle",
]
