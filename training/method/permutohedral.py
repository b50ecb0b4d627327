"""Permutohedral-lattice Gaussian filter (Adams, Baek and Davis, Eurographics 2010) in plain torch.

The released CoSA code computes its dense-CRF loss with the lattice of Krähenbühl's DenseCRF as
shipped in the rloss ``bilateralfilter`` C++ extension. That filter is *not* an exact Gaussian: its
response on natural images is about 0.5-0.6x that of ``exp(-|f_i - f_j|^2 / 2)`` (the blur is a
[1/2, 1, 1/2] stencil along each of the d+1 lattice axes and the slice is scaled by 1 / (1 + 2^-d)),
so a loss that matches the released strength has to run the same lattice. This module rebuilds it
step for step, in float32, with the same rounding rules as the extension's SSE build (round half to
even), so both place every point in the same simplex and give the same filtered values up to the
order of float additions:

1. elevate each d-dimensional feature onto the plane x_0 + ... + x_d = 0 of R^(d+1), scaled so that
   the lattice spacing matches a unit-variance Gaussian;
2. find the enclosing simplex (closest remainder-0 point + a ranking of the residuals) and the
   barycentric weights of its d+1 vertices;
3. splat values onto the vertices, blur along each of the d+1 lattice directions, slice back.

Lattice vertices are found with ``torch.unique`` over integer keys instead of the extension's hash
table; the set of vertices, and so the result, is the same.
"""

from __future__ import annotations

import math

import torch

from cosa_sdk.errors import CosaInputError

SSE_BLOCK = 4  # the extension processes points four at a time and pads the last block with zero features


class PermutohedralLattice:
    """The lattice of one point set: build once from N x d features, then ``filter`` any N x K values."""

    def __init__(self, features: torch.Tensor, *, pad_to_block: bool = True) -> None:
        if features.dim() != 2 or features.shape[0] == 0:
            raise CosaInputError(f"lattice features must be N x d with N > 0, got {tuple(features.shape)}.")
        self.num_points, self.dim = features.shape
        feats = features.detach().float()
        if pad_to_block and self.num_points % SSE_BLOCK:
            # The SSE build also inserts the simplex of these all-zero padding points into the lattice.
            pad = SSE_BLOCK - self.num_points % SSE_BLOCK
            feats = torch.cat([feats, feats.new_zeros(pad, self.dim)])
        rem0, rank, barycentric = _enclosing_simplex(feats)
        keys = _vertex_keys(rem0, rank)  # (N+pad) x (d+1) x d
        unique, inverse = torch.unique(keys.reshape(-1, self.dim), dim=0, return_inverse=True)
        # Slot 0 holds zeros: the value of a neighbour that is not in the lattice.
        self.offsets = inverse.reshape(keys.shape[0], self.dim + 1) + 1
        self.barycentric = barycentric
        self.num_vertices = unique.shape[0]
        self.neighbours = _blur_neighbours(unique)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat N x K values, blur along every lattice axis and slice back: N x K, float32."""
        if values.dim() != 2 or values.shape[0] != self.num_points:
            raise CosaInputError(f"values must be {self.num_points} x K, got {tuple(values.shape)}.")
        n, k = values.shape
        vals = values.detach().float()
        offsets, weights = self.offsets[:n], self.barycentric[:n]
        grid = vals.new_zeros(self.num_vertices + 1, k)
        for r in range(self.dim + 1):
            grid.index_add_(0, offsets[:, r], weights[:, r : r + 1] * vals)
        for n1, n2 in self.neighbours:
            blurred = grid + 0.5 * (grid[n1] + grid[n2])
            blurred[0] = 0.0
            grid = blurred
        alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))
        out = vals.new_zeros(n, k)
        for r in range(self.dim + 1):
            out += (weights[:, r : r + 1] * alpha) * grid[offsets[:, r]]
        return out


def _scale_factors(d: int) -> torch.Tensor:
    """Diagonal of the elevation matrix E (Adams et al., p. 5) for a unit-variance Gaussian."""
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    return torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)], dtype=torch.float32)


def _enclosing_simplex(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(remainder-0 vertex, rank of each coordinate, d+1 barycentric weights) for every point."""
    n, d = features.shape
    scale = _scale_factors(d).to(features.device)
    elevated = features.new_zeros(n, d + 1)
    running = features.new_zeros(n)
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[:, j] = running - float(j) * cf
        running = running + cf
    elevated[:, 0] = running
    down = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
    nearest = torch.round(elevated * down)  # half to even, as the SSE conversion rounds
    rem0 = nearest * float(d + 1)
    total = nearest.sum(dim=1, keepdim=True)
    residual = elevated - rem0
    rank = torch.zeros(n, d + 1, dtype=torch.long, device=features.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            i_smaller = (residual[:, i] < residual[:, j]).long()
            rank[:, i] += i_smaller
            rank[:, j] += 1 - i_smaller
    rank = rank + total.long()
    wrap = (rank < 0).long() - (rank > d).long()
    rank = rank + wrap * (d + 1)
    rem0 = rem0 + wrap.float() * (d + 1)
    coords = (elevated - rem0) * down
    barycentric = features.new_zeros(n, d + 2)
    for i in range(d + 1):
        position = (d - rank[:, i]).unsqueeze(1)
        barycentric.scatter_add_(1, position, coords[:, i : i + 1])
        barycentric.scatter_add_(1, position + 1, -coords[:, i : i + 1])
    barycentric[:, 0] += 1.0 + barycentric[:, d + 1]
    return rem0.long(), rank, barycentric[:, : d + 1].contiguous()


def _vertex_keys(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Integer keys (first d coordinates) of the d+1 vertices of each point's simplex: N x (d+1) x d."""
    d = rank.shape[1] - 1
    remainders = torch.arange(d + 1, device=rank.device)[:, None]  # (d+1) x 1
    # The canonical simplex: vertex r adds r to coordinates of rank <= d - r, r - (d+1) to the others.
    canonical = torch.where(
        torch.arange(d + 1, device=rank.device)[None, :] <= d - remainders, remainders, remainders - (d + 1)
    )
    return rem0[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)


def _blur_neighbours(keys: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each lattice axis j, the slots of the two neighbours of every slot (0 where absent)."""
    m, d = keys.shape
    low = keys.amin(dim=0) - (d + 1)
    span = keys.amax(dim=0) + (d + 1) - low + 1
    radix = torch.ones(d, dtype=torch.long, device=keys.device)
    for i in range(d - 2, -1, -1):
        radix[i] = radix[i + 1] * span[i + 1]
    if float(span.double().log2().sum()) > 62:
        raise CosaInputError("lattice keys span too wide a range; use larger sigmas (features in sigma units).")

    def encode(k: torch.Tensor) -> torch.Tensor:
        return ((k - low) * radix).sum(dim=1)

    codes = encode(keys)
    order = torch.argsort(codes)
    sorted_codes = codes[order]

    def lookup(k: torch.Tensor) -> torch.Tensor:
        code = encode(k)
        pos = torch.searchsorted(sorted_codes, code).clamp_max(m - 1)
        found = sorted_codes[pos] == code
        slots = torch.where(found, order[pos] + 1, torch.zeros_like(pos))
        return torch.cat([slots.new_zeros(1), slots])  # slot 0 (the zero value) has no neighbours

    neighbours = []
    for j in range(d + 1):
        step = torch.ones(d, dtype=torch.long, device=keys.device)
        if j < d:
            step[j] = -d
        neighbours.append((lookup(keys - step), lookup(keys + step)))
    return neighbours


def lattice_filter(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Filter B x K x N values with the lattice of B x d x N features, one image at a time."""
    out = torch.empty_like(values, dtype=torch.float32)
    for i in range(features.shape[0]):
        lattice = PermutohedralLattice(features[i].T.contiguous())
        out[i] = lattice.filter(values[i].T.contiguous()).T
    return out
