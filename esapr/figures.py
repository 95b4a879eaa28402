"""Small pieces the figures share: a canvas measured in inches for tables, text wrapping and
caption lines, and an atomic save in the format the file name asks for."""
from __future__ import annotations

from pathlib import Path

from esapr.errors import UserError
from esapr.files import atomic_write


def table_canvas(width: float, height: float):
    """A figure whose data coordinates are inches from the top-left corner."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    return fig, ax


def wrap(text: str, width_in: float, fontsize: float) -> list[str]:
    """Lines of ``text`` that fit ``width_in`` inches at ``fontsize`` (a conservative character width)."""
    import textwrap
    return textwrap.wrap(text, max(20, int(width_in * 72 / (fontsize * 0.6))))


def figure_format(path) -> str:
    """The file format a figure path asks for (its suffix), or a UserError naming the ones there are."""
    from matplotlib.figure import Figure
    kinds = Figure().canvas.get_supported_filetypes()
    kind = Path(path).suffix.lstrip(".").lower()
    if kind not in kinds:
        raise UserError(f"{path}: a figure is saved as one of {', '.join(sorted(kinds))}; give the file such a suffix")
    return kind


def save_figure(fig, path, dpi: int) -> None:
    if path is not None:
        atomic_write(Path(path), lambda stream: fig.savefig(stream, format=figure_format(path), dpi=dpi))


def text_lines(ax, x: float, y: float, lines: list[str], color: str, gid: str, line_h: float = 0.16) -> float:
    """Small left-aligned lines (a caption) from ``y`` down; returns the ``y`` below them."""
    for line in lines:
        ax.text(x, y + line_h / 2, line, ha="left", va="center", fontsize=7.5, color=color, gid=gid)
        y += line_h
    return y
