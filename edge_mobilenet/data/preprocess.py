"""Input preprocessing per model family, shared by training, calibration and evaluation.

A model's registry entry names one of these; the manifest records it so a device-side tool can
reproduce it without TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    """``(pixel - mean) / std`` on RGB pixels in [0, 255]; images are resized so the short side is
    ``size / crop_fraction`` and centre-cropped to ``size``."""

    name: str
    mean: float
    std: float
    crop_fraction: float = 0.875

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels.astype(np.float32) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


PREPROCESSING = {
    # MobileNet V1/V2 (keras.applications "tf" mode): [-1, 1]
    "symmetric": Preprocessing("symmetric", mean=127.5, std=127.5),
    # MobileNet V3 carries its own Rescaling layer: raw [0, 255]
    "raw": Preprocessing("raw", mean=0.0, std=1.0),
}


def get_preprocessing(name: str) -> Preprocessing:
    return PREPROCESSING[name]
