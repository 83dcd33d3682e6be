"""The paper's multi-attention CNN (section 2.3): a convolutional head, a body of three parallel
attention branches (CBAM, multi-head self-attention, slot attention) and a fully connected tail.

Every block is a small module with explicit arguments, so the ablations (any subset of the three
branches) and the backbone variant (the same body on a timm model's last feature map) are just
constructor arguments. Attention maps are returned on request rather than stored on the modules,
so no module keeps tensors (or autograd graphs) alive between calls.

``head`` is the convolutional head, ``cbam``, ``mhsa`` and ``slot`` the three branches, ``net`` the body,
the tail and the whole network with its config.
"""

from lsdc.models.attention.cbam import CBAM, ChannelAttention, SpatialAttention
from lsdc.models.attention.head import (
    AttentionHead,
    ConvBnAct,
    EnhancedInception,
    SeparableConvBnAct,
    TimmFeatureBackbone,
)
from lsdc.models.attention.mhsa import MHSA2d, MultiHeadSelfAttention
from lsdc.models.attention.net import BRANCHES, AttentionBody, AttentionConfig, ClassifierTail, LssAttentionNet
from lsdc.models.attention.slot import SlotAttention

__all__ = [
    "BRANCHES",
    "CBAM",
    "AttentionConfig",
    "AttentionBody",
    "AttentionHead",
    "ChannelAttention",
    "ClassifierTail",
    "ConvBnAct",
    "EnhancedInception",
    "LssAttentionNet",
    "MHSA2d",
    "MultiHeadSelfAttention",
    "SeparableConvBnAct",
    "SlotAttention",
    "SpatialAttention",
    "TimmFeatureBackbone",
]
