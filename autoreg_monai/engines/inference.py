# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Registration of new scans for the ``inference`` workflow, with results on the fixed image's own grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor, decollate_batch
from monai.engines.utils import IterationEvents

from autoreg_monai.engines.refinement import TestTimeRefinement
from autoreg_monai.engines.report import pair_file_stem
from autoreg_monai.metrics import jacobian_determinant, ncc
from autoreg_monai.spatial import (
    LPS_FROM_RAS,
    grid_world_points,
    sample_at_world,
    voxel_to_world_displacement,
    world_to_voxel_displacement,
)

__all__ = ["RegistrationInferStep", "map_to_fixed_grid", "register_item"]

logger = logging.getLogger(__name__)


def _affine_of(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, MetaTensor):
        raise ValueError(f"{name} must be a MetaTensor with its affine (load it with LoadImaged, image_only=True)")
    return torch.as_tensor(image.affine, dtype=torch.float64).cpu()


def map_to_fixed_grid(
    ddf: torch.Tensor,
    working_affine: torch.Tensor,
    fixed: MetaTensor,
    moving: MetaTensor,
    moving_label: MetaTensor | None = None,
    prealign: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Carry a displacement predicted on the working grid over to the fixed image's original grid.

    The field is converted to world millimetres and resampled (trilinearly) at the world position of
    every voxel of ``fixed``; composed with the pre-alignment (when given), it says where each fixed voxel
    reads the original ``moving`` image, which is sampled there (labels: nearest neighbour), so each
    output is interpolated once, from the original data.

    Args:
        ddf: ``(3, *W)`` displacement in voxels of the working grid (in the pre-aligned frame).
        working_affine: ``(4, 4)`` affine of the working grid.
        fixed: ``(C, *F)`` original fixed image with its affine.
        moving: ``(C, *M)`` original moving image with its affine (any grid).
        moving_label: optional ``(1, *M)`` label map on the moving image's grid.
        prealign: optional ``(4, 4)`` RAS+ matrix of the affine pre-alignment, fixed world point to moving
            world point (:func:`~autoreg_monai.prealign.prealign_matrix`); ``None``: the identity.

    Returns:
        On the grid of ``fixed``: ``warped_image`` ``(C, *F)``; ``ddf`` ``(3, *F)``, the total displacement
        (pre-alignment and deformation composed) in millimetres along ITK's LPS axes (a fixed-image point
        ``p`` corresponds to ``p + ddf(p)`` in the moving image); ``ddf_voxels`` ``(3, *F)``, the same in
        fixed voxels; ``jacobian`` ``(1, *F)``, the determinant of that total transform's Jacobian (edge
        voxels copied from their neighbours); ``moving_on_fixed``, the moving image resampled through world
        coordinates only; ``prealigned``, the moving image after the pre-alignment alone; and
        ``warped_label`` when ``moving_label`` is given.
    """
    fixed_affine, moving_affine = _affine_of(fixed, "fixed"), _affine_of(moving, "moving")
    shape = tuple(fixed.shape[1:])
    device = ddf.device
    points = grid_world_points(fixed_affine, shape).to(device)
    world_ddf = voxel_to_world_displacement(ddf.detach(), working_affine)
    displacement = sample_at_world(world_ddf, working_affine, points, padding_mode="border").to(torch.float64)
    matrix = torch.eye(4, dtype=torch.float64) if prealign is None else torch.as_tensor(prealign, dtype=torch.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"prealign must be a (4, 4) matrix, got {tuple(matrix.shape)}")
    matrix = matrix.to(device)

    def to_moving(world: torch.Tensor) -> torch.Tensor:
        return (matrix[:3, :3] @ world.reshape(3, -1) + matrix[:3, 3:]).reshape(world.shape)

    targets = to_moving(points + displacement)
    moving_data = moving.as_tensor().to(device).float()
    outputs = {
        "warped_image": sample_at_world(moving_data, moving_affine, targets),
        "moving_on_fixed": sample_at_world(moving_data, moving_affine, points),
    }
    identity = prealign is None or bool(torch.equal(matrix, torch.eye(4, dtype=torch.float64, device=device)))
    outputs["prealigned"] = (
        outputs["moving_on_fixed"] if identity else sample_at_world(moving_data, moving_affine, to_moving(points))
    )
    if moving_label is not None:
        label = moving_label.as_tensor().to(device)
        outputs["warped_label"] = sample_at_world(label, moving_affine, targets, mode="nearest")
    total = targets - points
    voxels = world_to_voxel_displacement(total, fixed_affine).float()
    jacobian = F.pad(jacobian_determinant(voxels[None])[None], (1, 1, 1, 1, 1, 1), mode="replicate")[0]
    outputs.update(
        ddf=(total * LPS_FROM_RAS.to(device).view(3, 1, 1, 1)).float(),
        ddf_voxels=voxels,
        jacobian=jacobian,
    )
    return outputs


def _on_fixed_grid(data: torch.Tensor, fixed: MetaTensor, name: str) -> MetaTensor:
    meta = {k: v for k, v in fixed.meta.items() if k != "affine"}  # the affine is given below
    meta["filename_or_obj"] = f"{name}.nii.gz"  # SaveImaged derives the output names from it
    meta["original_channel_dim"] = "no_channel"  # written as (X, Y, Z), or (X, Y, Z, C) with the channels last
    meta["spatial_shape"] = tuple(fixed.shape[1:])
    meta["original_affine"] = fixed.affine  # what SaveImaged compares against: no resampling happens
    return MetaTensor(data.cpu(), affine=fixed.affine, meta=meta)


def register_item(
    network: torch.nn.Module,
    inferer: Any,
    item: Mapping[str, Any],
    device: torch.device,
    name: str | None = None,
    refinement: TestTimeRefinement | None = None,
) -> dict[str, Any]:
    """Register one preprocessed pair and map the results back to the fixed image's grid.

    Args:
        network: an :class:`~autoreg_monai.networks.AutoRegPairNet` (in eval mode) on ``device``.
        inferer: called as ``inferer(image, network)`` with ``image`` ``(1, 2, *W)``, returning ``(1, 3, *W)``;
            not used when ``refinement`` takes steps: it needs the network's pyramid
            (:meth:`~autoreg_monai.networks.AutoRegPairNet.fields`).
        item: one pair as the bundle's inference preprocessing makes it (not batched): ``moving_image``,
            ``fixed_image`` (working grid, MetaTensors), ``moving_original``, ``fixed_original`` (as loaded),
            optional ``moving_label`` and ``prealign_matrix``.
        device: where the network runs.
        name: the pair's name in the output files (default ``<moving file>_to_<fixed file>``).
        refinement: test-time refinement of the network's field on the working grid (``None``: the network
            alone).

    Returns:
        MetaTensors on the fixed image's grid named ``<moving>_to_<fixed>`` for ``SaveImaged``:
        ``warped_image``, ``ddf`` (total displacement, millimetres, LPS, see :func:`map_to_fixed_grid`),
        ``jacobian``, optionally ``warped_label`` and ``prealign_matrix``; plus floats ``runtime_s`` (the
        network alone), ``refine_s`` (the refinement, 0 without), ``refine_steps``, ``ncc_before`` (world
        coordinates only), ``ncc_prealigned``, ``ncc``, ``folding_percent`` and the string ``pair``.
    """
    moving_work, fixed_work = item["moving_image"], item["fixed_image"]
    working_affine = _affine_of(fixed_work, "fixed_image")
    image = torch.cat([moving_work.as_tensor(), fixed_work.as_tensor()])[None].to(device)
    refine_s, refine_steps = 0.0, 0
    if refinement is not None and refinement.steps == 0:
        refinement = None  # the network alone: not even the loss of its field is evaluated
    with torch.no_grad():
        start = time.perf_counter()
        if refinement is None:
            ddf = inferer(image, network)
        else:
            ddf, pyramid = network.fields(image)
        if ddf.is_cuda:
            torch.cuda.synchronize(ddf.device)
        runtime = time.perf_counter() - start
        if refinement is not None:
            channels = image.shape[1] // 2
            ddf, _, report = refinement(image[:, :channels], image[:, channels:], ddf, pyramid)
            refine_s, refine_steps = report.seconds, report.steps
        fixed = item["fixed_original"]
        prealign = item.get("prealign_matrix")
        mapped = map_to_fixed_grid(
            ddf[0], working_affine, fixed, item["moving_original"], item.get("moving_label"), prealign
        )
    name = name or pair_file_stem(
        f"{Path(str(item['moving_original'].meta.get('filename_or_obj', 'moving'))).name} -> "
        f"{Path(str(fixed.meta.get('filename_or_obj', 'fixed'))).name}"
    )
    fixed_data = fixed.as_tensor().float().to(mapped["warped_image"].device)
    folded = (mapped["jacobian"] <= 0).float().mean().item() * 100.0
    result: dict[str, Any] = {
        key: _on_fixed_grid(mapped[key], fixed, name)
        for key in ("warped_image", "ddf", "jacobian", "warped_label")
        if key in mapped
    }
    if prealign is not None:
        result["prealign_matrix"] = torch.as_tensor(prealign, dtype=torch.float64).cpu()
    result.update(
        pair=name,
        runtime_s=runtime,
        refine_s=refine_s,
        refine_steps=refine_steps,
        ncc_before=float(ncc(mapped["moving_on_fixed"][None], fixed_data[None])[0]),
        ncc_prealigned=float(ncc(mapped["prealigned"][None], fixed_data[None])[0]),
        ncc=float(ncc(mapped["warped_image"][None], fixed_data[None])[0]),
        folding_percent=folded,
    )
    logger.info(
        "%s: network %.3f s, refinement %.3f s (%d steps), NCC %.4f (world coordinates) -> %.4f (pre-aligned) "
        "-> %.4f (registered), folded voxels %.4f %%",
        name,
        runtime,
        refine_s,
        refine_steps,
        result["ncc_before"],
        result["ncc_prealigned"],
        result["ncc"],
        folded,
    )
    return result


class RegistrationInferStep:
    """Register each pair of a batch and map the results back to the fixed image's grid.

    For ``SupervisedEvaluator(iteration_update=..., decollate=False)`` whose ``network`` is an
    :class:`~autoreg_monai.networks.AutoRegPairNet`. The batch holds the preprocessed working-grid pair
    (``moving_image``, ``fixed_image``: MetaTensors with the working affine) and the originals as loaded
    (``moving_original``, ``fixed_original``, optional ``moving_label``).

    A ``prealign_matrix`` in the batch (from :class:`~autoreg_monai.data.PreAlignd`) is composed with the
    predicted field.

    The engine output is a list with one dictionary per pair of MetaTensors on the fixed image's grid,
    named ``<moving>_to_<fixed>`` for ``SaveImaged``: ``warped_image``, ``ddf`` (total displacement,
    millimetres, LPS, see :func:`map_to_fixed_grid`), ``jacobian``, optionally ``warped_label`` and
    ``prealign_matrix``; plus floats ``runtime_s``, ``refine_s``, ``refine_steps``, ``ncc_before`` (world
    coordinates only), ``ncc_prealigned``, ``ncc``, ``folding_percent`` and the string ``pair``.

    Args:
        refinement: test-time refinement of each pair's field (the bundle's ``refinement``, whose ``steps``
            is the config's ``refine_steps``); ``None``: the network alone.
    """

    def __init__(self, refinement: TestTimeRefinement | None = None) -> None:
        self.refinement = refinement

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> list[dict[str, Any]]:
        engine.network.eval()
        outputs = [
            register_item(engine.network, engine.inferer, item, engine.state.device, refinement=self.refinement)
            for item in decollate_batch(batchdata, detach=True)
        ]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output = outputs
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
