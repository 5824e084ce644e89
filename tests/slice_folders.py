"""A synthetic COVID-SemiSeg-layout slice folder (Imgs/*.png, GT/*.png) for CLI tests."""
import os

import numpy as np
from PIL import Image


def write_slice_folder(root, n: int, seed: int = 0, shape: tuple[int, int] = (40, 40), edges: bool = False) -> str:
    """n grey slices with one bright rectangular 'lesion' each, and its {0,255} mask (and with ``edges``
    its one-pixel outline in Edge/, as Ref-Net's edge supervision reads); returns root."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "Imgs"))
    os.makedirs(os.path.join(root, "GT"))
    if edges:
        os.makedirs(os.path.join(root, "Edge"))
    for i in range(n):
        gt = np.zeros(shape, np.uint8)
        y, x = rng.integers(8, min(shape) - 12, 2)
        gt[y:y + 8, x:x + 10] = 255
        img = (rng.integers(0, 60, shape) + (gt > 0) * 150).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, "Imgs", f"{i}.png"))
        Image.fromarray(gt).save(os.path.join(root, "GT", f"{i}.png"))
        if edges:
            edge = gt.copy()
            edge[y + 1:y + 7, x + 1:x + 9] = 0
            Image.fromarray(edge).save(os.path.join(root, "Edge", f"{i}.png"))
    return str(root)
