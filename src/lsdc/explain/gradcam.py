"""Grad-CAM (Selvaraju et al. 2017) on a model's last convolutional feature map, through hooks.

The feature map is the head's output for the paper's ``LssAttentionNet`` (what its attention branches
see) and the last feature stage of a timm model (``feature_info[-1]``: ``layer4`` of a ResNet,
``features.norm5`` of a DenseNet). The class score is the logit of one class of the crop's own
condition (the network has ``5 x K`` logits; see ``lsdc.experiment.select_logits``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsdc.models import LssAttentionNet

__all__ = ["GradCam", "grad_cam", "target_layer"]


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the model's last convolutional feature map."""
    if isinstance(model, LssAttentionNet):
        return model.head
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        name = last["module"] if isinstance(last, dict) else info.module_name()[-1]
        return model.get_submodule(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError(f"{type(model).__name__} has no convolution to explain")
    return convs[-1]


class GradCam:
    """Context manager holding forward/gradient hooks on ``layer``; removes them on exit."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        self.model = model
        self.layer = layer if layer is not None else target_layer(model)
        self.activation: Tensor | None = None
        self.gradient: Tensor | None = None
        self._handle: Any = None

    def _forward_hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.activation = output.detach()
        if output.requires_grad:
            output.register_hook(self._save_gradient)

    def _save_gradient(self, grad: Tensor) -> None:
        self.gradient = grad.detach()

    def __enter__(self) -> GradCam:
        self._handle = self.layer.register_forward_hook(self._forward_hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, x: Tensor, cond: int, k: int, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM of one crop ``x`` (1, C, H, W) for its condition ``cond``.

        Explains ``class_index`` (default: the predicted class). Returns the map (H, W) in [0, 1]
        (upsampled bilinearly, divided by its maximum; all zero when no location supports the class)
        and the class probabilities (K,).
        """
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = self.model(x).float()
            sel = logits.view(logits.shape[0], -1, k)[:, cond]  # (1, K)
            probs = torch.softmax(sel, dim=1)[0].detach().cpu().numpy()
            target = int(probs.argmax()) if class_index is None else int(class_index)
            sel[0, target].backward()
        if self.activation is None or self.gradient is None:
            raise RuntimeError("Grad-CAM hooks saw no activation or gradient")
        weights = self.gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = F.relu((weights * self.activation).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else torch.zeros_like(cam)
        self.model.zero_grad(set_to_none=True)
        self.activation = self.gradient = None
        return cam.clamp(0.0, 1.0).cpu().numpy(), probs


def grad_cam(model: nn.Module, x: Tensor, cond: int, k: int,
             class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-shot :class:`GradCam` on the default target layer; see ``GradCam.__call__``."""
    with GradCam(model) as cam:
        return cam(x, cond, k, class_index)
