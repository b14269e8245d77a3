"""The look the bench charts share: matplotlib on first use, one palette, one way to save.

``proxy-core bench``'s report chart (:func:`proxy_core.bench.report.write_chart`)
and ``proxy-core bench-load``'s scale chart draw with the same colours per
transport, font sizes and resolution, so that the figures read alike side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GREY", "PALETTE", "color_of", "pyplot", "save"]

#: One colour per transport, in the sorted order of the transports charted.
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
#: What is not ours (the bare library's rows), or a reference line.
GREY = "#999999"


def pyplot() -> tuple[Any, str | None]:
    """Return ``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` and why not.

    matplotlib is imported here, on first use (``pip install 'proxy-core[bench]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install 'proxy-core[bench]'): chart skipped"
    return plt, None


def color_of(transport: str, transports: Sequence[str]) -> str:
    """Return the colour of ``transport`` among the (sorted) ``transports`` charted."""
    ordered = sorted(transports)
    if transport not in ordered:
        return PALETTE[0]
    return PALETTE[ordered.index(transport) % len(PALETTE)]


def save(plt: Any, figure: Any, path: str | Path, title: str, *, bottom: float = 0.0) -> None:
    """Give ``figure`` its overall ``title``, lay it out and write it as a PNG at ``path``.

    ``bottom`` keeps that fraction of the height free below the panels (a figure legend).
    """
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
