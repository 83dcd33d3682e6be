"""The smallest experiment and localiser configs that run the whole pipeline in seconds (pipeline and
notebook tests)."""

from __future__ import annotations


def tiny_experiment(tag: str, epochs: int = 1, patience: int = 1, size: int = 32) -> str:
    """YAML of a tiny attention experiment: 2 folds, 32 px crops, a few thousand parameters."""
    return f"""
tag: {tag}
crops: {{size: {size}, n_slices: 3, workers: 1}}
folds: {{n_folds: 2, seed: 42}}
model:
  name: attention
  attention: {{head_widths: [8, 16], eim_widths: [16, 32], num_heads: 4, num_slots: 2, slot_dim: 16,
              slot_iters: 1, tail_widths: [16], reduction: 4}}
train: {{epochs: {epochs}, batch_size: 64, workers: 0, patience: {patience}}}
"""


def tiny_localizer(name: str, epochs: int = 2) -> str:
    """YAML of a tiny localiser: 2 folds, 64 px slices, width 8."""
    return f"""
name: {name}
folds: {{n_folds: 2, seed: 42}}
localizer: {{image_size: 64, width: 8, epochs: {epochs}}}
"""
