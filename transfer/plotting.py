"""Matplotlib as every figure of the project uses it: headless (Agg), a font that draws any class name, figures
saved whole, and the gallery of images with captions that several reports draw.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from transfer.io import atomic_path


@functools.lru_cache(maxsize=1)
def _figure_font():
    """The font the figures' text is drawn in (matplotlib's default family), to ask which glyphs it has."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties()))


def drawable(name: str) -> str:
    """``name`` with each character the figures' font lacks (emoji, most often) replaced by its Unicode name in
    angle brackets (``<ROSE> rose``), so that no class shows as empty boxes; other names are unchanged."""
    font = _figure_font()
    parts = []
    for char in name:
        if char.isspace() or font.get_char_index(ord(char)):
            parts.append(char)
        elif unicodedata.category(char) in ("Mn", "Cf", "Sk"):  # joiners, variation selectors, skin tones
            continue
        else:
            parts.append(f"<{unicodedata.name(char, f'U+{ord(char):04X}')}>")
    return "".join(parts)


def save_figure(figure, path: Path, dpi: int = 110, tight: bool = True) -> None:
    """Every figure's one way to disk: a PNG written whole or not at all, and the figure closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    plt.close(figure)


def plot_gallery(entries: Sequence[tuple[str | Path, str]], path: Path, title: str, empty: str) -> None:
    """Images upright (EXIF orientation applied, as the model sees them), each with its caption, four a row.

    Args:
        entries: (image path, caption) in the order shown.
        path: the PNG to write.
        title: the figure's title.
        empty: what the figure says when there is no entry.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageOps

    columns = min(4, max(1, len(entries)))
    rows = max(1, -(-len(entries) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, caption) in zip(axes.flat, entries, strict=False):
        with Image.open(image_path) as image:
            image.draft("RGB", (320, 320))  # a JPEG decodes at a fraction of its size: a thumbnail is enough
            axis.imshow(ImageOps.exif_transpose(image).convert("RGB"))
        axis.set_title(drawable(caption), fontsize=9)
    if not entries:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    figure.suptitle(drawable(title))
    save_figure(figure, path)
