"""Drawing a scene as an RGB image (Pillow)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from llava_edge.data.shapes.config import BACKGROUND, COLORS, SIZE_FRACTION
from llava_edge.data.shapes.scenes import Scene, Shape


def _cell_edges(image_size: int) -> list[int]:
    """Pixel boundaries of the three grid rows/columns: [0, a, b, image_size]."""
    return [round(k * image_size / 3) for k in range(4)]


def shape_box(shape: Shape, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box ``(x0, y0, x1, y1)`` of ``shape``, strictly inside its cell."""
    edges = _cell_edges(image_size)
    cx0, cx1 = edges[shape.col], edges[shape.col + 1]
    cy0, cy1 = edges[shape.row], edges[shape.row + 1]
    # From the smallest cell, so a size class has the same pixel size in every cell.
    side = max(3, int(image_size // 3 * SIZE_FRACTION[shape.size]))

    def offset(cell_len: int, jitter: float) -> int:
        # Keep at least one background pixel between the shape and the cell border, so
        # shapes in neighbouring cells never touch.
        slack = cell_len - side
        return 1 + int(jitter * max(slack - 1, 0))

    x0 = cx0 + offset(cx1 - cx0, shape.jitter_x)
    y0 = cy0 + offset(cy1 - cy0, shape.jitter_y)
    return x0, y0, x0 + side - 1, y0 + side - 1


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image: flat colours, no anti-aliasing, light background."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape_box(shape, image_size)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # triangle, pointing up
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image
