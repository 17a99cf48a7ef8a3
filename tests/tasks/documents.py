"""Document pages drawn with PIL, with the region of each element known: what the real layout and text detectors
are tested on (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("the model reads each page and finds its title text tables and figures in one pass while every line of "
         "words stays inside the margins of the column so that a reader can follow the argument from the first "
         "section to the results").split()


def _line(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def layout_page(seed: int = 0, size: tuple = (800, 608)) -> tuple[np.ndarray, dict]:
    """An RGB uint8 page (H, W, 3) with a title, two paragraphs, a ruled table and a bar-chart figure.

    Returns:
        The page and the boxes (x1, y1, x2, y2, pixels) of "title", "text" (each paragraph: "text", "text2"),
        "table", "figure", and "lines": one box per text line of the paragraphs.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    page = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(page)
    body = ImageFont.load_default(size=15)
    regions: dict = {"lines": []}

    title = ImageFont.load_default(size=30)
    bbox = draw.textbbox((0, 0), "Results of the layout study", font=title)
    x0 = (w - (bbox[2] - bbox[0])) // 2
    draw.text((x0, 30), "Results of the layout study", fill="black", font=title)
    regions["title"] = (x0 + bbox[0], 30 + bbox[1], x0 + bbox[2], 30 + bbox[3])

    def paragraph(key: str, top: int, lines: int) -> int:
        y = top
        for _ in range(lines):
            text = _line(rng, 9)
            box = draw.textbbox((40, y), text, font=body)
            draw.text((40, y), text, fill="black", font=body)
            regions["lines"].append(box)
            y += 22
        regions[key] = (40, top, max(b[2] for b in regions["lines"][-lines:]), y - 22 + 18)
        return y

    paragraph("text", 95, 6)

    # The table: 6 rows x 4 columns, ruled, numbers in the cells.
    tx1, ty1, tx2, ty2 = 60, 250, 548, 450
    rows, cols = 6, 4
    for r in range(rows + 1):
        y = ty1 + r * (ty2 - ty1) // rows
        draw.line([(tx1, y), (tx2, y)], fill="black", width=2)
    for c in range(cols + 1):
        x = tx1 + c * (tx2 - tx1) // cols
        draw.line([(x, ty1), (x, ty2)], fill="black", width=2)
    for r in range(rows):
        for c in range(cols):
            cell = "Method" if r == 0 and c == 0 else f"{rng.integers(10, 99)}.{rng.integers(0, 9)}"
            draw.text((tx1 + c * (tx2 - tx1) // cols + 12, ty1 + r * (ty2 - ty1) // rows + 8), cell, fill="black",
                      font=body)
    regions["table"] = (tx1, ty1, tx2, ty2)

    # The figure: a bar chart with axes.
    fx1, fy1, fx2, fy2 = 140, 480, 468, 680
    draw.line([(fx1, fy1), (fx1, fy2)], fill="black", width=2)
    draw.line([(fx1, fy2), (fx2, fy2)], fill="black", width=2)
    for i, v in enumerate(rng.uniform(0.3, 0.95, size=6)):
        x = fx1 + 20 + i * 50
        draw.rectangle([x, fy2 - int(v * (fy2 - fy1)), x + 30, fy2 - 1], fill=(60 + 30 * i, 90, 200 - 20 * i))
    regions["figure"] = (fx1, fy1, fx2, fy2)

    paragraph("text2", 705, 4)
    return np.asarray(page), regions


def normalise_imagenet(page: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float32: pixels / 255 minus ImageNet's mean over its std (PaddleDetection's and rapid-layout's
    preprocessing)."""
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return ((page.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
