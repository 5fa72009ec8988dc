"""Accuracy tracks: the CP factor sets' stored relative error and equivariance bound
(per L), and the measured equivariance error of every backend (float64, random rotation
with a fixed seed; exact backends sit at rounding level, CP ones below their bound)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import LS, BackendByL, need


class CPFactors:
    params: ClassVar = [LS]
    param_names: ClassVar = ["L"]
    timeout = 120
    version = "1"

    def setup(self, L):
        cp_factors = need("tdn_core", "cp_factors")
        self.factors = cp_factors(L, L, L)

    def track_rel_error(self, L):
        return float(self.factors.rel_error)

    track_rel_error.unit = "relative"

    def track_bound(self, L):
        return float(self.factors.bound)

    track_bound.unit = "relative"

    def track_rank(self, L):
        return int(self.factors.rank)

    track_rank.unit = "rank"


class Equivariance(BackendByL):
    def setup(self, backend, L):
        tp = self.tensor_product(backend, L, 4).double()
        random_inputs, random_rotation, equivariance_error = need(
            "tdn_core.testing", "random_inputs", "random_rotation", "equivariance_error"
        )
        gen = torch.Generator().manual_seed(L)
        x, y, w = random_inputs(tp.descriptor, 32, torch.float64, generator=gen)
        R = random_rotation(torch.float64, generator=gen)
        with torch.no_grad():
            self.error = float(equivariance_error(tp, tp.descriptor, x, y, w, R))

    def track_equivariance_error(self, backend, L):
        return self.error

    track_equivariance_error.unit = "relative"
