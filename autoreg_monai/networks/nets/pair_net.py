# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The searched network with the one-input, one-output signature of MONAI bundles."""

from __future__ import annotations

import torch

from autoreg_monai.networks.nets.autoregnet import AutoRegNet

__all__ = ["AutoRegPairNet"]


class AutoRegPairNet(AutoRegNet):
    """:class:`AutoRegNet` taking the stacked pair and returning only the full-resolution displacement.

    This is the signature MONAI's bundle tools (``verify_net_in_out``, ``ckpt_export``), its inferers and
    MONAI Label expect: one input ``(B, 2 * in_channels, *S)`` = ``[moving, fixed]`` along channels, one
    output, the displacement field ``(B, N, *S)`` in voxels. Parameters and state-dict keys are those of
    :class:`AutoRegNet`, so a ``model.pt`` written by train-evaluation loads into either class.

    Example::

        net = AutoRegPairNet(Genotype.from_json("models/genotype.json"))
        net.load_state_dict(torch.load("models/model.pt", weights_only=True))
        ddf = net(torch.cat([moving, fixed], dim=1))  # (B, 3, D, H, W)
    """

    def fields(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The displacement and its pyramid (what :class:`AutoRegNet` returns) for the stacked pair.

        Args:
            image: ``(B, 2 * in_channels, *S)``, the moving image's channels first.

        Returns:
            ``(ddf, pyramid)``: ``(B, N, *S)`` displacement in voxels and the fields at 1/2, 1/4, ... of ``S``
            (what :class:`~autoreg_monai.engines.TestTimeRefinement` starts from).
        """
        channels = self.in_channels
        if image.ndim != self.spatial_dims + 2 or image.shape[1] != 2 * channels:
            raise ValueError(
                f"expected the stacked pair (B, {2 * channels}, *S) = [moving, fixed], got {tuple(image.shape)}"
            )
        return super().forward(image[:, :channels], image[:, channels:])

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Args:
            image: ``(B, 2 * in_channels, *S)``, the moving image's channels first.

        Returns:
            ``(B, N, *S)`` displacement in voxels (the pull-back convention of MONAI's ``Warp``).
        """
        return self.fields(image)[0]
