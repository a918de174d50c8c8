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
"""The candidate operations of the AutoReg search space.

Li, Li, Liu, Luo, Fan, "Automated Learning for Deformable Medical Image Registration by Jointly
Optimizing Network Architectures and Objective Functions", IEEE TIP 2023, section III-B: eight
convolutions of three types (regular, separable, dilated) and several kernel sizes, each followed by
LeakyReLU(0.2), without normalisation.

Every operation maps ``(B, C_in, *S)`` to ``(B, C_out, *ceil(S / stride))`` ("same" padding), in 2-D
or 3-D.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import split_args
from torch import nn

__all__ = [
    "DEFAULT_ACT",
    "he_init",
    "DILATION",
    "OPS",
    "PRIMITIVES",
    "DilConv",
    "RegConv",
    "SepConv",
    "make_op",
    "receptive_field",
]

DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.2})
"""Activation after every candidate operation (the paper's LeakyReLU with slope 0.2)."""

DILATION: int = 2
"""Dilation of the ``dil_conv_*`` operations, as in the authors' code: receptive fields 5, 9 and 13."""


def he_init(module: nn.Module, act: tuple | str | None = DEFAULT_ACT) -> None:
    """He (Kaiming) normal initialisation of every convolution in ``module``, for the activation after it.

    The weights get variance ``gain**2 / fan_in`` (``gain`` of the activation: ``sqrt(2 / (1 + a**2))`` for a
    leaky ReLU of slope ``a``, 1 without activation) and the biases zero, so a chain of operations keeps the
    scale of its input. PyTorch's default (``kaiming_uniform_(a=sqrt(5))``, a third of that variance, and
    random biases) shrinks the signal several times per layer: through the dozen convolutions of an
    AutoReg network, which has no normalisation and no skip connections, the predicted field then hardly
    depends on the images and training stalls.

    Args:
        module: an operation (its convolutions are re-initialised in place).
        act: the activation that follows the convolutions (MONAI factory name or ``(name, kwargs)``);
            ``None``: none (linear gain).
    """
    if act is None:
        nonlinearity, slope = "linear", 0.0
    else:
        name, kwargs = split_args(act)
        name = str(name).lower()
        if name == "leakyrelu":
            nonlinearity, slope = "leaky_relu", float(kwargs.get("negative_slope", 0.01))
        elif name == "relu":
            nonlinearity, slope = "relu", 0.0
        else:
            nonlinearity, slope = "linear", 0.0
    for conv in module.modules():
        if isinstance(conv, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity=nonlinearity)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


class RegConv(Convolution):
    """A regular convolution followed by the activation: ``act(conv_k(x))``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels ``C_in``.
        out_channels: number of output channels ``C_out``.
        kernel_size: odd kernel size ``k`` along every axis.
        strides: convolution stride; 2 halves every spatial size (rounding up).
        act: activation name or ``(name, kwargs)`` for MONAI's activation factory.

    Input ``(B, C_in, *S)``, output ``(B, C_out, *ceil(S / strides))``. Receptive field ``k``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        strides: int = 1,
        act: tuple | str = DEFAULT_ACT,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, strides=strides, kernel_size=kernel_size, act=act, norm=None
        )
        he_init(self, act)


class DilConv(Convolution):
    """A dilated convolution followed by the activation: ``act(conv_k,d(x))``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels ``C_in``.
        out_channels: number of output channels ``C_out``.
        kernel_size: odd kernel size ``k`` along every axis.
        strides: convolution stride; 2 halves every spatial size (rounding up).
        dilation: spacing ``d`` between kernel taps.
        act: activation name or ``(name, kwargs)`` for MONAI's activation factory.

    Input ``(B, C_in, *S)``, output ``(B, C_out, *ceil(S / strides))``. Receptive field ``d * (k - 1) + 1``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        strides: int = 1,
        dilation: int = DILATION,
        act: tuple | str = DEFAULT_ACT,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            strides=strides,
            kernel_size=kernel_size,
            dilation=dilation,
            act=act,
            norm=None,
        )
        he_init(self, act)


class SepConv(nn.Sequential):
    """A depthwise-separable convolution followed by the activation.

    A depthwise ``k`` convolution (one filter per input channel, carrying the stride) then a pointwise
    ``1`` convolution mixing channels, then the activation. This is the separable convolution the paper
    names; the authors' code puts an extra full ``k`` convolution in front, which makes its "separable"
    op heavier than a plain convolution, and we do not follow it.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels ``C_in``.
        out_channels: number of output channels ``C_out``.
        kernel_size: odd kernel size ``k`` along every axis.
        strides: stride of the depthwise convolution; 2 halves every spatial size (rounding up).
        act: activation name or ``(name, kwargs)`` for MONAI's activation factory.

    Input ``(B, C_in, *S)``, output ``(B, C_out, *ceil(S / strides))``. Receptive field ``k``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        strides: int = 1,
        act: tuple | str = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        self.add_module(
            "depthwise",
            Convolution(
                spatial_dims,
                in_channels,
                in_channels,
                strides=strides,
                kernel_size=kernel_size,
                groups=in_channels,
                conv_only=True,
            ),
        )
        self.add_module(
            "pointwise", Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, act=act, norm=None)
        )
        he_init(self.depthwise, None)
        he_init(self.pointwise, act)


OpFactory = Callable[[int, int, int, int], nn.Module]

OPS: dict[str, OpFactory] = {
    "conv_1x1": lambda c_in, c_out, stride, dims: RegConv(dims, c_in, c_out, 1, stride),
    "conv_3x3": lambda c_in, c_out, stride, dims: RegConv(dims, c_in, c_out, 3, stride),
    "conv_5x5": lambda c_in, c_out, stride, dims: RegConv(dims, c_in, c_out, 5, stride),
    "sep_conv_3x3": lambda c_in, c_out, stride, dims: SepConv(dims, c_in, c_out, 3, stride),
    "sep_conv_5x5": lambda c_in, c_out, stride, dims: SepConv(dims, c_in, c_out, 5, stride),
    "dil_conv_3x3": lambda c_in, c_out, stride, dims: DilConv(dims, c_in, c_out, 3, stride),
    "dil_conv_5x5": lambda c_in, c_out, stride, dims: DilConv(dims, c_in, c_out, 5, stride),
    "dil_conv_7x7": lambda c_in, c_out, stride, dims: DilConv(dims, c_in, c_out, 7, stride),
}
"""Operation registry: name -> ``factory(in_channels, out_channels, stride, spatial_dims)``.

The names follow the paper's Fig. 2 (1-Conv, 3-Conv, 5-Conv, 3-SConv, 5-SConv, 3-DConv, 5-DConv, 7-DConv);
``_3x3`` etc. give the kernel size along every axis (``3x3x3`` in 3-D).
"""

PRIMITIVES: tuple[str, ...] = tuple(OPS)
"""The paper's eight candidate operations, in the row order of its Fig. 3 heatmaps."""

_RECEPTIVE_FIELDS: dict[str, int] = {
    "conv_1x1": 1,
    "conv_3x3": 3,
    "conv_5x5": 5,
    "sep_conv_3x3": 3,
    "sep_conv_5x5": 5,
    "dil_conv_3x3": DILATION * 2 + 1,
    "dil_conv_5x5": DILATION * 4 + 1,
    "dil_conv_7x7": DILATION * 6 + 1,
}


def receptive_field(name: str) -> int:
    """Receptive field, in voxels along each axis, of the registered operation ``name`` at stride 1."""
    if name not in _RECEPTIVE_FIELDS:
        raise ValueError(f"unknown operation {name!r}; known operations: {', '.join(PRIMITIVES)}")
    return _RECEPTIVE_FIELDS[name]


def make_op(name: str, in_channels: int, out_channels: int, stride: int = 1, spatial_dims: int = 3) -> nn.Module:
    """Build the registered operation ``name``.

    Args:
        name: a key of :data:`OPS`.
        in_channels: number of input channels.
        out_channels: number of output channels.
        stride: 1 keeps the spatial size, 2 halves it (rounding up).
        spatial_dims: 2 or 3.

    Raises:
        ValueError: ``name`` is not a registered operation, or ``spatial_dims`` is not 2 or 3.
    """
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; known operations: {', '.join(PRIMITIVES)}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    op: nn.Module = OPS[name](in_channels, out_channels, stride, spatial_dims)
    return op
