"""matplotlib, imported only when a picture is drawn (it is the optional extra ``[report]``)."""
from __future__ import annotations

import io

from ..errors import PanoptemError

INSTALL = "pip install 'panoptem[report]'"


def require_matplotlib():
    """The ``matplotlib`` module, or a PanoptemError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PanoptemError(f"Previews and reports need matplotlib, which is not installed; install it "
                            f"with: {INSTALL}") from None
    return matplotlib


def figure(width_in: float, height_in: float, dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no pyplot, no GUI backend, no global state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, **kw) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kw)
    return buf.getvalue()
