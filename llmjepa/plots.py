"""Figures of a single run's evaluations (curves over training). Reports draw their own pages."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmjepa.specs import ExperimentSpec  # noqa: E402

PANELS = [  # one line per key under the prefix: modality/layer
    ("RankMe (uncentred)", "collapse/rankme/"),
    ("effective rank (centred)", "collapse/erank/"),
    ("std after LayerNorm", "collapse/ln_std_mean/"),
    ("feature rms", "collapse/rms/"),
    ("linear probe, mean accuracy", "probe/acc/mean/"),
    ("item->caption R@1", "align/r1/"),
]


def training_curves(history: list[tuple[int, dict]], spec: ExperimentSpec):
    """A 2x3 grid of evaluation metrics against the step, one line per modality and layer."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (title, prefix) in zip(axes.flat, PANELS):
        layers = sorted({k[len(prefix):] for _, m in history for k in m if k.startswith(prefix)})
        for layer in layers:
            pts = [(s, m[prefix + layer]) for s, m in history if prefix + layer in m]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=layer)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if layers:
            ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {spec.objective.target_mode}, text_ratio {spec.data.text_ratio}, "
                 f"jepa_weight {spec.objective.jepa_weight}, seed {spec.train.seed}", fontsize=11)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
