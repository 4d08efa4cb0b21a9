"""The report's picture: each model's main score with its 95% interval against generated tokens per item.

Needs matplotlib (the `bench` extra); without it the plot is skipped and
the rest of the report is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> bool:
    """Write the plot; False when matplotlib is missing or nothing was scored."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = results["metrics"][0]
    points = []
    for model in results["models"]:
        data = results["aggregate"][model["name"]]
        estimate = data["metrics"][metric["name"]]
        if estimate["value"] is not None:
            points.append((model, data["cost"]["tokens_per_item"], estimate))
    if not points:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model, tokens, estimate in points:
        low, high = estimate["value"] - estimate["low"], estimate["high"] - estimate["value"]
        marker = "s" if model["kind"] == "mixture" else "o"
        axes.errorbar([tokens], [estimate["value"]], yerr=[[low], [high]], fmt=marker, capsize=4)
        axes.annotate(model["name"], (tokens, estimate["value"]), textcoords="offset points", xytext=(6, 4))
    axes.set_xlabel("generated tokens per item (every call)")
    axes.set_ylabel(f"{metric['label']}{' (%)' if metric['unit'] == '%' else ''}")
    axes.set_title(f"{results['suite']}: score (95% CI) against cost; squares are mixtures")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
