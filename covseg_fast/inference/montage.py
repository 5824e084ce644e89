"""The overlay montage of `covseg screen`: ``n`` axial slices that say what they show.

Each tile is one axial slice spread over the lungs' extent, in radiological view (the patient's right on
the image's left, anterior up), at the same mm scale in both directions, with the right lung outlined in
green, the left lung in blue and the counted infection filled (red; a multi-class model: ground-glass
opacity yellow, consolidation red, further classes magenta), and the slice's z position (the world
superior coordinate of its centre, mm). A header names the case and the model and says that this is
research use, not a medical device (and when the lung checks failed, that the burden is not
trustworthy); a footer holds the legend.
"""
from __future__ import annotations

import numpy as np

from ..atomic import atomic_save
from ..io.volume import Volume
from .anatomy import LEFT_LUNG, RIGHT_LUNG

DISCLAIMER = "research use, not a medical device"
RIGHT_COLOUR, LEFT_COLOUR = (0, 220, 0), (40, 140, 255)
CLASS_COLOURS = ((255, 0, 0),)                                    # binary: infection
MULTI_COLOURS = ((255, 220, 0), (255, 0, 0), (255, 0, 255))       # GGO, consolidation, others
HEADER, FOOTER = 44, 24


def display_slice(plane: np.ndarray) -> np.ndarray:
    """Canonical axial plane (X→R, Y→A) → radiological display (rows posterior-ward, columns to the left)."""
    return plane[::-1, ::-1].T


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def slice_z_mm(volume: Volume, k: int) -> float:
    """World z (superior, mm) of the centre of canonical slice ``k``."""
    x, y = (volume.data.shape[0] - 1) / 2.0, (volume.data.shape[1] - 1) / 2.0
    return float(volume.affine[2] @ np.array([x, y, k, 1.0]))


def _colours(names: tuple[str, ...]):
    return MULTI_COLOURS if names else CLASS_COLOURS


def _tile(volume: Volume, infection: np.ndarray, lung: np.ndarray, k: int, window, tile: int, names, font):
    from PIL import Image, ImageDraw

    lo, hi = window
    grey = np.clip((display_slice(volume.data[:, :, k]) - lo) / (hi - lo), 0, 1) * 255
    h_mm, w_mm = grey.shape[0] * volume.spacing[1], grey.shape[1] * volume.spacing[0]
    scale = tile / max(h_mm, w_mm)
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    img = Image.fromarray(grey.astype(np.uint8)).resize(size, Image.BILINEAR)
    rgb = np.repeat(np.asarray(img, dtype=np.float32)[..., None], 3, axis=2)
    inf = np.asarray(Image.fromarray(display_slice(infection[:, :, k]).astype(np.uint8)).resize(size, Image.NEAREST))
    for c, colour in enumerate(_colours(names), start=1):
        sel = inf == c if c < len(_colours(names)) else inf >= c
        rgb[sel] = 0.5 * rgb[sel] + 0.5 * np.array(colour, dtype=np.float32)
    lab = np.asarray(Image.fromarray(display_slice(lung[:, :, k]).astype(np.uint8)).resize(size, Image.NEAREST))
    for value, colour in ((RIGHT_LUNG, RIGHT_COLOUR), (LEFT_LUNG, LEFT_COLOUR)):
        m = lab == value
        inner = m.copy()
        inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        rgb[m & ~inner] = colour
    canvas = Image.new("RGB", (tile, tile))
    canvas.paste(Image.fromarray(rgb.astype(np.uint8)), ((tile - size[0]) // 2, (tile - size[1]) // 2))
    draw = ImageDraw.Draw(canvas)
    text = f"z = {slice_z_mm(volume, k):.1f} mm"
    draw.rectangle((0, tile - 18, 8 + int(draw.textlength(text, font=font)), tile), fill=(0, 0, 0))
    draw.text((4, tile - 17), text, fill=(255, 255, 255), font=font)
    return canvas


def write_montage(path: str, volume: Volume, infection: np.ndarray, lung: np.ndarray, window: tuple[float, float],
                  *, case_id: str, model: str = "", names: tuple[str, ...] = (), trusted: bool = True,
                  n: int = 6, tile: int = 256) -> None:
    """PNG of ``n`` axial slices (module docstring); ``infection`` uint8 classes, ``lung`` uint8 1 right / 2 left."""
    from PIL import Image, ImageDraw

    font, big = _font(13), _font(15)
    z = volume.data.shape[2]
    with_lung = np.flatnonzero(lung.any(axis=(0, 1)))
    span = with_lung if with_lung.size else np.arange(z)
    m = min(n, span.size)  # the centres of m equal parts of the lungs' extent (not the extreme slices)
    ks = np.unique(span[((np.arange(m) + 0.5) * span.size / m).astype(int)])
    tiles = [_tile(volume, infection, lung, int(k), window, tile, names, font) for k in ks]
    cols = min(3, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (3 * tile, HEADER + rows * tile + FOOTER), (24, 24, 24))  # 3 wide: room for the legend
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * tile, HEADER + (i // cols) * tile))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), f"{case_id}" + (f"  ·  model {model}" if model else ""), fill=(255, 255, 255), font=big)
    note = DISCLAIMER if trusted else f"{DISCLAIMER}  ·  lung checks failed: burden not trustworthy"
    draw.text((6, 24), note, fill=(255, 255, 255) if trusted else (255, 170, 0), font=font)
    x, y = 6, HEADER + rows * tile + 5
    legend = [("right lung", RIGHT_COLOUR, False), ("left lung", LEFT_COLOUR, False)]
    legend += [(nm, c, True) for nm, c in zip(names, MULTI_COLOURS)] if names else [("infection", CLASS_COLOURS[0], True)]
    for label, colour, filled in legend + [("radiological view: patient's right on the left", None, False)]:
        if colour is not None:
            draw.rectangle((x, y + 2, x + 10, y + 12), outline=colour, width=2, fill=colour if filled else None)
            x += 14
        draw.text((x, y), label, fill=(255, 255, 255), font=font)
        x += int(draw.textlength(label, font=font)) + 14
    atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))
