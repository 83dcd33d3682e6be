"""lsdc: a Kaggle-style pipeline for RSNA 2024 Lumbar Spine Degenerative Classification."""

__version__ = "0.1.0"
