"""Models: the paper's multi-attention CNN, timm baselines, one config-driven factory, size counts."""

from lsdc.models.attention import LssAttentionNet
from lsdc.models.factory import ModelConfig, create_model, list_models, load_pretrained, register_model
from lsdc.models.profile import count_macs, count_parameters, model_summary

__all__ = [
    "LssAttentionNet",
    "ModelConfig",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_summary",
    "register_model",
]
