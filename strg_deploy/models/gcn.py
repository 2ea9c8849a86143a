"""Graph convolutions over the similarity graph and the forward/backward space-time graphs.

One layer is the paper's form Z = sum over graphs g of G_g X W_g, then an optional LayerNorm, ReLU and an
optional residual; or, with ``separate_relu``, Z = sum over g of ReLU([LayerNorm](G_g X W_g)) (the public
reproduction's space-time layer). The similarity graph is dense ([B, T*N, T*N]); the space-time graphs
are bands of N x N blocks ([B, T-1, N, N], see :mod:`strg_deploy.models.graphs`).
"""

from __future__ import annotations

import torch
from torch import nn

from strg_deploy.config import FUSIONS
from strg_deploy.errors import StrgError
from strg_deploy.models.graphs import propagate_backward, propagate_forward, similarity_graph

GRAPHS = ("similarity", "forward", "backward")


class GraphConvLayer(nn.Module):
    """One graph convolution: Z = ReLU([LayerNorm](sum_g G_g X W_g)) over ``graphs``, [+ X]; with
    ``separate_relu``, Z = sum_g ReLU([LayerNorm](G_g X W_g)), [+ X] (one LayerNorm, applied to each term).

    forward(x float [B, T, N, d], mask bool [B, T, N], similarity float [B, T*N, T*N],
    forward_graph float [B, T-1, N, N], backward_graph float [B, T-1, N, N]) -> float [B, T, N, d].
    Graphs the layer does not use may be passed as None. Padded nodes (mask False) come out zero.

    Each graph has its own ``nn.Linear(dim, dim, bias=False)`` (``w_similarity``, ``w_forward``,
    ``w_backward``). All X W_g come from one matrix product with the weights stacked; the similarity
    term is one batched product [B, T*N, T*N] @ [B, T*N, d]; the space-time terms are N x N blocks
    accumulated into it frame by frame (batched, in place), never as dense (T*N) x (T*N) matrices.
    With ``separate_relu`` every term is its own [B, T, N, d] tensor (the space-time ones from the bands).
    """

    def __init__(
        self,
        dim: int,
        residual: bool = False,
        layer_norm: bool = False,
        graphs: tuple[str, ...] = GRAPHS,
        separate_relu: bool = False,
    ):
        super().__init__()
        unknown = [g for g in graphs if g not in GRAPHS]
        if unknown or not graphs:
            raise StrgError(f"graph layer needs graphs from {list(GRAPHS)}, got {list(graphs)}")
        self.dim = dim
        self.graphs = tuple(graphs)
        self.residual = residual
        self.separate_relu = separate_relu
        for name in self.graphs:
            self.add_module(f"w_{name}", nn.Linear(dim, dim, bias=False))
        self.norm = nn.LayerNorm(dim) if layer_norm else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        similarity: torch.Tensor | None,
        forward_graph: torch.Tensor | None,
        backward_graph: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, frames, count, dim = x.shape
        weight = torch.cat([getattr(self, f"w_{name}").weight for name in self.graphs], dim=0)
        projected = dict(zip(self.graphs, nn.functional.linear(x, weight).split(dim, dim=-1), strict=True))
        if self.separate_relu:
            graphs = {"similarity": similarity, "forward": forward_graph, "backward": backward_graph}
            terms = (self._term(name, graphs[name], p) for name, p in projected.items())
            z = sum(torch.relu(self._norm(term)) for term in terms)
            return self._finish(z, x, mask)
        # z = G_sim (X W_sim), then the space-time terms are added in place, frame block by frame block.
        if "similarity" in projected:
            z = torch.matmul(similarity, projected["similarity"].flatten(1, 2))
        else:
            z = x.new_zeros(batch, frames * count, dim)
        blocks = z.view(batch * frames, count, dim)
        if "forward" in projected:
            # Frame block k = b*T + t gets forward[b, t] @ (X W_fwd)[k + 1]; the block of each clip's
            # last frame is zero, so nothing leaks from one clip into the next.
            # in place: autocast does not cast for baddbmm_, so the graph takes the blocks' dtype
            graph = nn.functional.pad(forward_graph, (0, 0, 0, 0, 0, 1)).flatten(0, 1).to(blocks.dtype)
            blocks[:-1].baddbmm_(graph[:-1], projected["forward"].flatten(0, 1)[1:])
        if "backward" in projected:
            graph = nn.functional.pad(backward_graph, (0, 0, 0, 0, 1, 0)).flatten(0, 1).to(blocks.dtype)
            blocks[1:].baddbmm_(graph[1:], projected["backward"].flatten(0, 1)[:-1])
        return self._finish(torch.relu(self._norm(z.view(x.shape))), x, mask)

    @staticmethod
    def _term(name: str, graph: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """G_g (X W_g): graph [B, T*N, T*N] (similarity) or [B, T-1, N, N], projected [B, T, N, d] -> same."""
        graph = graph.to(projected.dtype)
        if name == "similarity":
            return torch.matmul(graph, projected.flatten(1, 2)).view(projected.shape)
        if name == "forward":
            return propagate_forward(graph, projected)
        return propagate_backward(graph, projected)

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.norm is None else self.norm(z)

    def _finish(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[+ X], then padded nodes set to zero: z, x float [B, T, N, d], mask bool [B, T, N]."""
        if self.residual:
            z = z + x
        return torch.where(mask[..., None], z, 0.0)

    def extra_repr(self) -> str:
        extra = ", separate_relu=True" if self.separate_relu else ""
        return f"dim={self.dim}, graphs={list(self.graphs)}, residual={self.residual}{extra}"


class SpaceTimeGCN(nn.Module):
    """A stack of graph convolutions over the similarity and space-time graphs.

    forward(x float [B, T, N, d], mask bool [B, T, N], forward_graph float [B, T-1, N, N],
    backward_graph float [B, T-1, N, N]) -> float [B, T, N, d] (padded nodes zero).

    The similarity graph is computed once, from the node features entering the first layer, with
    ``phi`` and ``phi_prime`` (``nn.Linear(d, d, bias=False)``). ``fusion="sum"`` is the paper's form:
    every layer sums over all three graphs. ``fusion="towers"`` is the late fusion of the public
    reproduction (github.com/jd730/STRG, ``RGCN``): a tower of ``layers`` layers on the similarity graph
    only, Z = ReLU(G_sim X W), and one on the two space-time graphs only,
    Z = ReLU(G_fwd X W_fwd) + ReLU(G_bwd X W_bwd) (a ReLU on each term, then the sum), the towers'
    outputs summed. Without ``residual`` and ``layer_norm`` and with every node valid, its outputs equal
    the reproduction's with the same weights (tests/test_gcn_reproduction.py).
    """

    def __init__(
        self, dim: int, layers: int = 3, fusion: str = "sum", residual: bool = False, layer_norm: bool = False
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise StrgError(f"graph fusion must be one of {list(FUSIONS)}, got {fusion!r}")
        if layers < 1:
            raise StrgError(f"graph network needs at least one layer, got {layers}")
        self.fusion = fusion
        self.phi = nn.Linear(dim, dim, bias=False)
        self.phi_prime = nn.Linear(dim, dim, bias=False)
        tower_graphs = [GRAPHS] if fusion == "sum" else [("similarity",), ("forward", "backward")]
        separate_relu = fusion == "towers"
        self.towers = nn.ModuleList(
            nn.ModuleList(
                GraphConvLayer(dim, residual, layer_norm, graphs, separate_relu) for _ in range(layers)
            )
            for graphs in tower_graphs
        )

    def similarity(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x float [B, T, N, d], mask bool [B, T, N] -> similarity graph float [B, T*N, T*N]."""
        return similarity_graph(x.flatten(1, 2), mask.flatten(1), self.phi, self.phi_prime)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, forward_graph: torch.Tensor, backward_graph: torch.Tensor
    ) -> torch.Tensor:
        similarity = self.similarity(x, mask)
        out = None
        for tower in self.towers:
            h = x
            for layer in tower:
                h = layer(h, mask, similarity, forward_graph, backward_graph)
            out = h if out is None else out + h
        return out
