"""A patching result as a heatmap PNG: layers down, positions (token labels) or heads across."""

import pathlib
from collections.abc import Sequence

from torch import Tensor

from ..io import PathLike, atomic_path


def heatmap(
    result: Tensor,
    path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    title: str = "",
    colorbar: str = "metric",
) -> pathlib.Path:
    """Write a [layers, positions] or [layers, heads] result as a PNG (atomically); returns the path.

    ``labels`` name the columns (e.g. the prompt's tokens; default: their indices), ``layers`` the
    rows (default 0, 1, ...). The colour scale is diverging and centred on 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.dim() != 2:
        raise ValueError(
            "heatmap draws a [layers, positions] or [layers, heads] result, got shape "
            f"{tuple(result.shape)}; select a head or a position of a three-axis result first"
        )
    n_rows, n_cols = result.shape
    labels = [str(i) for i in range(n_cols)] if labels is None else [str(s) for s in labels]
    layers = list(range(n_rows)) if layers is None else list(layers)
    if len(labels) != n_cols or len(layers) != n_rows:
        raise ValueError(
            f"{len(labels)} labels and {len(layers)} layers for a result of shape {tuple(result.shape)}"
        )
    grid = result.detach().float().cpu().numpy()
    limit = float(abs(grid).max()) or 1.0
    fig, ax = plt.subplots(figsize=(1.6 + 0.42 * n_cols, 1.4 + 0.2 * n_rows))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(n_cols), [repr(s)[1:-1] for s in labels], rotation=90, fontsize=8)
    ax.set_yticks(range(n_rows), [str(layer) for layer in layers], fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label=colorbar)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return pathlib.Path(path)
