"""Models: the paper's multi-attention CNN, timm baselines, the localiser's networks, one config-driven
factory, size counts."""

from lsdc.models.attention import AttentionConfig, LssAttentionNet
from lsdc.models.factory import ATTENTION, ModelConfig, create_model, list_models, register_model
from lsdc.models.localizer import KeypointNet
from lsdc.models.profile import count_macs, count_macs_of, count_parameters, matmul_peak_flops, model_summary
from lsdc.models.weights import load_pretrained

__all__ = [
    "ATTENTION",
    "AttentionConfig",
    "KeypointNet",
    "LssAttentionNet",
    "ModelConfig",
    "count_macs",
    "count_macs_of",
    "count_parameters",
    "create_model",
    "list_models",
    "load_pretrained",
    "matmul_peak_flops",
    "model_summary",
    "register_model",
]
