"""Explanations of single predictions: Grad-CAM on any CNN, the attention maps of the paper's network."""

from lsdc.explain.attention_maps import CaseMaps, explain
from lsdc.explain.gradcam import GradCam, grad_cam, target_layer

__all__ = ["CaseMaps", "GradCam", "explain", "grad_cam", "target_layer"]
