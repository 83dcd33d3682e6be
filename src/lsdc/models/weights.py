"""Local pretrained weights: read a checkpoint file and load it into a model, checking that it fits.

Weights never come from the network. A classifier whose shape does not fit (ImageNet's 1000
classes) is skipped and a first conv trained on another number of input channels is adapted as
timm does; any other missing or misshapen weight is an error naming the file, so a checkpoint of
the wrong architecture never loads silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from lsdc.errors import ConfigError

__all__ = ["load_pretrained", "read_state_dict"]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / torch checkpoint, unwrapped from common containers/prefixes."""
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's to fix
        raise ConfigError(f"checkpoint {path} cannot be read as a state dict: {exc}") from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} does not hold a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the model's final classifier (timm's ``get_classifier``), if any."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return ()
    classifier = get_classifier()
    if not isinstance(classifier, nn.Module):
        return ()
    return tuple(f"{name}." for name, module in model.named_modules() if module is classifier and name)


def load_pretrained(model: nn.Module, path: str | Path, what: str = "pretrained_path") -> None:
    """Load local weights into ``model``, skipping a classifier that does not fit.

    Every other weight must be present with the right shape (a first conv trained on a different
    number of input channels is adapted), else ConfigError naming the file and the first misfits.
    ``what`` names the config key in messages.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    state = read_state_dict(path)
    own = model.state_dict()
    first_conv = next((k for k, v in own.items() if v.ndim == 4), None)
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            continue
        if value.shape == target.shape:
            loaded[key] = value
        elif key == first_conv and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            loaded[key] = adapt_input_conv(target.shape[1], value, base_chans=value.shape[1])
    classifier = _classifier_prefixes(model)
    misfits = [k for k in own if k not in loaded and not (classifier and k.startswith(classifier))]
    if misfits:
        raise ConfigError(
            f"{what} {path} does not fit model {type(model).__name__}: {len(misfits)} weights "
            f"missing or of another shape, e.g. {', '.join(misfits[:3])}"
        )
    model.load_state_dict(loaded, strict=False)
