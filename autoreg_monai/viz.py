# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Figures of a search: α heatmaps (paper Fig. 3) and loss-weight trajectories, written as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from autoreg_monai.utils.atomic import atomic_write

__all__ = ["field_to_rgb", "plot_alpha_heatmaps", "plot_loss_weight_trajectory", "plot_registration_panel"]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path


def plot_alpha_heatmaps(
    weights: Mapping[str, np.ndarray], op_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """One heatmap per cell type: rows the candidate operations, columns the searched edges.

    As in the paper's Fig. 3, the colour is each operation's weight ``softmax(α)`` on each edge and a red
    box marks the operation a genotype keeps (the largest weight).

    Args:
        weights: e.g. ``{"feature cell α_F": (num_edges, num_ops) array, "deformation cell α_D": ...}``.
        op_names: the row labels (candidate operations).
        path: output PNG.
        title: figure title.
    """
    fig, axes = plt.subplots(1, len(weights), figsize=(6.0 * len(weights), 4.4), squeeze=False, layout="constrained")
    for ax, (name, matrix) in zip(axes[0], weights.items()):
        matrix = np.asarray(matrix, dtype=float)
        num_edges = matrix.shape[0]
        low, high = float(matrix.min()), float(matrix.max())
        uniform = high - low < 1e-6
        if uniform:  # not searched (yet): no operation is preferred
            low, high = 0.0, 1.0
            name = f"{name} (uniform: no choice made)"
        # otherwise colours span the observed range: early in a search the weights differ by little from 1/num_ops
        image = ax.imshow(matrix.T, cmap="viridis", aspect="auto", vmin=low, vmax=high)
        for edge, op in enumerate([] if uniform else matrix.argmax(axis=1)):
            ax.add_patch(Rectangle((edge - 0.5, op - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(num_edges))
        per_scale = 3
        ax.set_xticklabels([f"s{e // per_scale + 1}e{e % per_scale + 1}" for e in range(num_edges)])
        ax.set_yticks(range(len(op_names)))
        ax.set_yticklabels(op_names)
        ax.set_xlabel("edge (scale 1 = 1/2 resolution)")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, label="softmax(α)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_loss_weight_trajectory(
    history: Sequence[Sequence[float]], term_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """λ of each loss term against the search epoch, one panel per term (each with its own scale).

    Args:
        history: one λ vector per epoch.
        term_names: the name of each λ (see :func:`autoreg_monai.networks.loss_term_names`).
        path: output PNG.
        title: figure title.
    """
    values = np.asarray(history, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(term_names):
        raise ValueError(f"need one row of {len(term_names)} loss weights per epoch, got shape {values.shape}")
    columns = 2
    rows = -(-len(term_names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.0, 2.2 * rows + 0.6), squeeze=False, layout="constrained")
    epochs = np.arange(1, len(values) + 1)
    for k, ax in enumerate(axes.flat):
        if k >= len(term_names):
            ax.axis("off")
            continue
        ax.plot(epochs, values[:, k], marker="o", color=f"C{k}")
        ax.set_title(f"λ{k + 1} {term_names[k]}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("epoch", fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def field_to_rgb(ddf: np.ndarray) -> np.ndarray:
    """Colour a displacement field: each component to one RGB channel, 0.5 meaning no displacement.

    Args:
        ddf: ``(3, *S)`` (or ``(2, *S)``, blue left at 0.5).

    Returns:
        ``(*S, 3)`` in ``[0, 1]``, components scaled by the field's largest absolute value.
    """
    ddf = np.asarray(ddf, dtype=float)
    scale = float(np.abs(ddf).max()) or 1.0
    rgb = np.full((*ddf.shape[1:], 3), 0.5)
    for c in range(min(3, ddf.shape[0])):
        rgb[..., c] = 0.5 + 0.5 * ddf[c] / scale
    return rgb


def plot_registration_panel(
    fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, ddf: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """The paper's Fig. 5 layout: one row per axis through the volume centre.

    Columns: fixed, moving, warped moving, the displacement field as RGB, ``|moving - fixed|`` (before)
    and ``|warped - fixed|`` (after), the differences on one shared scale.

    Args:
        fixed: ``(D, H, W)`` image.
        moving: ``(D, H, W)`` image on the same grid.
        warped: ``(D, H, W)`` moving image after registration.
        ddf: ``(3, D, H, W)`` displacement field.
        path: output PNG.
        title: figure title (e.g. the pair's name).
    """
    volumes = [np.asarray(v, dtype=float) for v in (fixed, moving, warped)]
    if volumes[0].ndim != 3 or any(v.shape != volumes[0].shape for v in volumes) or ddf.shape[1:] != fixed.shape:
        raise ValueError(
            f"need three (D, H, W) images and a (3, D, H, W) field on one grid, got {[v.shape for v in volumes]} "
            f"and {tuple(ddf.shape)}"
        )
    fixed, moving, warped = volumes
    rgb = field_to_rgb(ddf)
    before, after = np.abs(moving - fixed), np.abs(warped - fixed)
    diff_max = max(float(before.max()), float(after.max())) or 1.0
    low, high = float(min(v.min() for v in volumes)), float(max(v.max() for v in volumes))
    names = ["fixed", "moving", "warped", "field (RGB = axes 0,1,2)", "|moving - fixed|", "|warped - fixed|"]
    fig, axes = plt.subplots(3, 6, figsize=(13.0, 7.0), squeeze=False, layout="constrained")
    for axis in range(3):
        index = fixed.shape[axis] // 2

        def cut(volume: np.ndarray, axis: int = axis, index: int = index) -> np.ndarray:
            return np.rot90(np.take(volume, index, axis=axis))

        row = axes[axis]
        for ax, volume in zip(row[:3], (fixed, moving, warped)):
            ax.imshow(cut(volume), cmap="gray", vmin=low, vmax=high)
        row[3].imshow(np.rot90(np.take(rgb, index, axis=axis)))
        for ax, volume in zip(row[4:], (before, after)):
            ax.imshow(cut(volume), cmap="magma", vmin=0.0, vmax=diff_max)
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if axis == 0:
                ax.set_title(names[k], fontsize=9)
        row[0].set_ylabel(f"axis {axis}, slice {index}", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
