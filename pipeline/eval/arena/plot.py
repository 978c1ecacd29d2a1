"""The ratings as a picture: DIR/arena/ratings.png (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.eval.arena.fit import ANCHOR


def plot_ratings(ratings: Mapping[str, Mapping], path: str | Path) -> Path:
    """Ratings with their 95% intervals as error bars, best on top (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ratings)[::-1]
    values = np.array([ratings[n]["rating"] for n in names])
    lo = np.array([ratings[n]["ci95"][0] for n in names])
    hi = np.array([ratings[n]["ci95"][1] for n in names])
    figure, axes = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    axes.errorbar(values, range(len(names)), xerr=[np.maximum(values - lo, 0), np.maximum(hi - values, 0)],
                  fmt="o", capsize=4)
    axes.set_yticks(range(len(names)), names)
    axes.axvline(ANCHOR, color="grey", linewidth=0.5)
    axes.set_xlabel("Bradley–Terry rating (95% bootstrap CI, by prompt)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
