"""The dialogue figure of training samples and of the streaming evaluation: three log-mel panels
(user, reference system, model) above a strip of speaking curves, with optional event lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEL_FRAMES_PER_SECOND = 100
MEL_RANGE = (-14, 4)  # log-mel (nats) colour range: silence to loud speech


@dataclass(frozen=True)
class Curve:
    """A line on the speaking strip: values at ``seconds``."""

    seconds: np.ndarray
    values: np.ndarray
    label: str
    alpha: float = 1.0


@dataclass(frozen=True)
class Marks:
    """Vertical lines at ``seconds`` on every panel: one colour on spectrograms, one on the strip."""

    seconds: list[float]
    color_on_mel: str
    color_on_strip: str
    style: str = "-"
    width: float = 1.0


def save_dialogue_figure(
    path: Path,
    mels: list[np.ndarray],
    titles: tuple[str, str, str],
    curves: list[Curve],
    seconds: float,
    marks: list[Marks] = (),
    strip_label: str = "seconds",
    width: float = 12,
    dpi: int = 80,
) -> Path:
    """Draw the figure and write it as a PNG. ``mels`` are three (frames, n_mels) arrays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(4, 1, figsize=(width, 8), sharex=True, height_ratios=[3, 3, 3, 1])
    for axis, mel, title in zip(axes[:3], mels, titles, strict=True):
        mel = np.asarray(mel)
        extent = (0, len(mel) / MEL_FRAMES_PER_SECOND, 0, mel.shape[1])
        axis.imshow(mel.T, origin="lower", aspect="auto", extent=extent, vmin=MEL_RANGE[0], vmax=MEL_RANGE[1])
        axis.set_ylabel(title)
    for curve in curves:
        axes[3].plot(curve.seconds, curve.values, label=curve.label, alpha=curve.alpha)
    for mark in marks:
        for axis in axes:
            color = mark.color_on_strip if axis is axes[3] else mark.color_on_mel
            for t in mark.seconds:
                axis.axvline(t, color=color, lw=mark.width, ls=mark.style)
    axes[3].set_ylim(-0.05, 1.05)
    axes[3].set_xlim(0, seconds)
    axes[3].set_xlabel(strip_label)
    axes[3].legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
