"""``cueq``: the product run by cuequivariance(-torch), a peer for benchmarks.

What runs where: the executor is ``cuequivariance_torch.SegmentedPolynomial`` with
``method="naive"`` on every device, chosen explicitly (never cueq's warn-and-fall-back
path). ``naive`` is the method cueq documents as working everywhere: plain PyTorch,
one einsum per path, traced with torch.fx and contraction-ordered by opt_einsum_fx.
On CPU it is the only method; on CUDA it is the same PyTorch code, *not* cueq's
kernels (``uniform_1d`` / ``fused_tp`` need ``cuequivariance_ops_torch`` and a
different segment structure; they are not wired up here because no GPU test covers
them yet). ``CueqProduct.method`` records the method actually used.

The descriptor comes from cueq's own builder,
``cue.descriptors.channelwise_tensor_product`` (subscripts
``weights[uv], lhs[iu], rhs[jv], out[kuv] + C[ijk]``, ``ir_mul`` layout), with irreps
``Cx0 + Cx1 + ... `` (group ``cue.SO3``, or ``cue.O3`` with parity (-1)^l) for x and
``1x0 + 1x1 + ...`` for y. Three changes make it tdn's product:

1. Basis and normalization. cueq's CG blocks are e3nn's ``wigner_3j`` in the same
   real basis times a positive per-path factor (``sqrt(2 l3 + 1)`` in cueq 0.13, for
   cue.SO3 and cue.O3 alike, also for SO3 paths with odd l1 + l2 + l3; the builder's
   ``normalize_paths_for_operand(-1)`` leaves it at that because each path has its
   own output segment). The factor is measured per path at build time as
   ``<c, W> / <W, W>`` against tdn's block W and divided out; if a block is not a
   multiple of W (a change of basis in a future cueq) the build raises.
2. Output segments. The builder gives each path its own output segment; here all
   paths of one output degree l3 write into one ``[2 l3 + 1, C]`` segment (cueq
   sums paths that share an output segment), so the output is tdn's
   ``[E, (L+1)^2, C]``, which is cueq's ``ir_mul`` layout of ``Cx0 + ... + CxL``.
3. Weight segments. per_path: one ``[C]`` weight segment per path in tdn's canonical
   order, so ``w [E, P, C]`` is passed as ``[E, P*C]``. shared: a single weight
   segment that every path references, so ``w [E, C]`` is passed as is.

x and y are already in ``ir_mul`` layout, so no input or output is permuted.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .._cg import cg_block
from .._errors import UnsupportedDescriptor
from .._optional import require
from ..descriptors import TPDescriptor
from ._base import Backend

_SUBSCRIPTS = "uv,iu,jv,kuv+ijk"
# relative residual above which a cueq CG block does not count as a multiple of tdn's
_BASIS_TOLERANCE = 1e-10


def _labels(group: str, lmax: int) -> list[str]:
    if group == "O3":
        return [f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1)]
    return [str(l) for l in range(lmax + 1)]


def cue_descriptor(desc: TPDescriptor):
    """cueq ``SegmentedTensorProduct`` computing ``desc`` in tdn's normalization.

    Operands (``E`` edges, ``P`` paths, ``C`` channels, flattened per edge):
    weights ``[C]`` (shared) or ``[P*C]`` (per_path), x ``[d1*C]``, y ``[d2]``,
    out ``[d3*C]``; subscripts ``u,iu,j,ku+ijk`` after squeezing the unit mode v.
    Returns ``(stp, scales)``: ``scales[p]`` is the factor cueq's block for path p
    carried relative to ``wigner_3j`` (divided out in ``stp``).
    """
    cue = require("cuequivariance", "backend 'cueq'")
    C, group = desc.channels, desc.group
    irreps1 = cue.Irreps(group, "+".join(f"{C}x{s}" for s in _labels(group, desc.lmax_in)))
    irreps2 = cue.Irreps(group, "+".join(f"1x{s}" for s in _labels(group, desc.lmax_sh)))
    wanted = [ir for _, ir in cue.Irreps(group, "+".join(_labels(group, desc.lmax_out)))]
    built = cue.descriptors.channelwise_tensor_product(irreps1, irreps2, wanted)
    [(_, src)] = built.polynomial.operations
    if str(src.subscripts) != _SUBSCRIPTS:
        raise RuntimeError(
            f"cueq's channelwise_tensor_product now has subscripts {src.subscripts!s}, "
            f"expected {_SUBSCRIPTS}: update tdn_core.backends.cueq_peer"
        )
    ls1 = [ir.l for _, ir in irreps1]
    ls2 = [ir.l for _, ir in irreps2]
    ls3 = [ir.l for _, ir in built.outputs[0].irreps]

    path_index = {path: p for p, path in enumerate(desc.paths)}
    shared = desc.path_weights == "shared"
    stp = cue.SegmentedTensorProduct.from_subscripts(_SUBSCRIPTS)
    for _ in range(1 if shared else len(desc.paths)):
        stp.add_segment(0, (C, 1))
    for l in range(desc.lmax_in + 1):
        stp.add_segment(1, (2 * l + 1, C))
    for l in range(desc.lmax_sh + 1):
        stp.add_segment(2, (2 * l + 1, 1))
    for l in range(desc.lmax_out + 1):
        stp.add_segment(3, (2 * l + 1, C, 1))

    scales: dict[int, float] = {}
    for path in src.paths:
        _, s1, s2, s3 = path.indices
        key = (ls1[s1], ls2[s2], ls3[s3])
        p = path_index.get(key)
        if p is None or p in scales:
            raise RuntimeError(
                f"cueq's channelwise_tensor_product gave path {key}, which tdn's "
                f"{group} paths do not contain exactly once"
            )
        c = np.asarray(path.coefficients, dtype=np.float64)
        ref = cg_block(*key)  # unit Frobenius norm
        scale = float(np.sum(c * ref))
        residual = float(np.linalg.norm(c - scale * ref))
        if scale <= 0 or residual > _BASIS_TOLERANCE * abs(scale):
            raise RuntimeError(
                f"cueq's CG block for path {key} is not a positive multiple of "
                f"e3nn's wigner_3j (scale {scale:.6g}, residual {residual:.3g}): "
                "its basis changed; map it before using backend 'cueq'"
            )
        scales[p] = scale
        stp.add_path(0 if shared else p, key[0], key[1], key[2], c=c / scale)
    if len(scales) != len(desc.paths):
        absent = [path for p, path in enumerate(desc.paths) if p not in scales]
        raise RuntimeError(f"cueq's channelwise_tensor_product has no path for {absent}")
    stp = stp.squeeze_modes("v")
    stp.assert_valid()
    return stp, [scales[p] for p in range(len(desc.paths))]


class CueqProduct(nn.Module):
    """cuequivariance_torch ``SegmentedPolynomial`` (method ``naive``) in tdn's layout.

    x [E, d1, C], y [E, d2], weight [E, C] (shared) or [E, P, C] (per_path)
    -> out [E, d3, C]. No trainable parameters; all buffers are non-persistent.
    """

    def __init__(
        self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device, method: str
    ) -> None:
        super().__init__()
        cue = require("cuequivariance", "backend 'cueq'")
        cuet = require("cuequivariance_torch", "backend 'cueq'")
        self.desc = desc
        stp, self.path_scales = cue_descriptor(desc)
        poly = cue.SegmentedPolynomial.eval_last_operand(stp)
        # math_dtype=None: cueq keeps its coefficients in float64 and casts them to the
        # inputs' dtype on each call (a few small tensors), so the executor stays exact
        # if a parent module later converts it with .to(dtype). A fixed math_dtype
        # would pin the coefficients and silently cast float64 inputs down to it.
        self.poly = cuet.SegmentedPolynomial(poly, method=method, math_dtype=None).to(device)
        if self.poly.method != method:
            raise RuntimeError(f"cuequivariance_torch ran {self.poly.method!r}, not {method!r}")
        self.method = method
        self.weight_numel = poly.inputs[0].size  # C (shared) or P*C (per_path)
        # cueq registers its coefficients as persistent buffers; a layer's state_dict
        # must not depend on the backend
        for sub in self.poly.modules():
            for name, buf in list(sub.named_buffers(recurse=False)):
                sub.register_buffer(name, buf, persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        E, d1, C = x.shape
        [out] = self.poly([weight.reshape(E, self.weight_numel), x.reshape(E, d1 * C), y])
        return out.view(E, self.desc.dims[2], C)


class CueqBackend(Backend):
    """Exact peer running cuequivariance's channelwise tensor product (uvu).

    Runs ``cuequivariance_torch.SegmentedPolynomial(method="naive")`` (plain PyTorch)
    on CPU and CUDA alike; see the module docstring for the descriptor mapping.
    """

    name = "cueq"
    exact = True
    modes = ("uvu",)
    path_weights = ("shared", "per_path")
    requires = ("cuequivariance", "cuequivariance_torch")
    #: cuequivariance_torch method used on each device type; explicit, never a fallback
    methods: ClassVar[dict[str, str]] = {"cpu": "naive", "cuda": "naive"}

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        reason = cls.check(desc)
        if reason is not None:
            raise UnsupportedDescriptor(reason)
        device = torch.device(device)
        method = cls.methods.get(device.type)
        if method is None:
            raise UnsupportedDescriptor(
                f"device: backend 'cueq' runs on {tuple(cls.methods)}, not {device.type!r}"
            )
        return CueqProduct(desc, dtype, device, method)
