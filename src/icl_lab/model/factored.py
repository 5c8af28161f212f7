"""`Factored`: a matrix kept as the product A @ B of thin factors, such as a head's
W_QK = W_Q W_K^T or W_OV = W_V W_O ([d_model, d_head] @ [d_head, d_model]), or its full circuit
through the embeddings ([d_vocab, d_head] @ [d_head, d_vocab]). Its eigenvalues, singular values and
norm come from d_head-sized computations, never from the full product (Elhage et al. 2021).
TransformerLens's `FactoredMatrix` names work too: `.AB`, `.BA`, `.T`, `.ndim`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Factored:
    """M = A @ B with A [..., m, r] and B [..., r, n] (r small)."""

    A: Tensor
    B: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.A.shape[:-1], self.B.shape[-1])

    def full(self) -> Tensor:
        """The product itself (only for small m, n)."""
        return self.A @ self.B

    def eigenvalues(self) -> Tensor:
        """Non-zero eigenvalues of the square product [..., r] (complex): those of B @ A."""
        return torch.linalg.eigvals((self.B @ self.A).double())

    def singular_values(self) -> Tensor:
        """Singular values [..., r]: those of R_A R_B^T, with A = Q_A R_A and B^T = Q_B R_B."""
        ra = torch.linalg.qr(self.A.double()).R  # [..., r, r]
        rb = torch.linalg.qr(self.B.transpose(-1, -2).double()).R
        return torch.linalg.svdvals(ra @ rb.transpose(-1, -2))

    def norm(self) -> Tensor:
        """Frobenius norm, from the r x r Gram matrices: ||AB||^2 = trace(A^T A B B^T)."""
        return ((self.A.transpose(-1, -2) @ self.A) * (self.B @ self.B.transpose(-1, -2))).sum((-1, -2)).sqrt()

    def __matmul__(self, other: Tensor) -> "Factored":
        return Factored(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> "Factored":
        return Factored(other @ self.A, self.B)

    # ---- TransformerLens's FactoredMatrix names ----------------------------------------------
    @property
    def AB(self) -> Tensor:
        """The product A @ B [..., m, n] (TransformerLens's name for `full()`)."""
        return self.full()

    @property
    def BA(self) -> Tensor:
        """B @ A [..., r, r] (square products only): it has the product's non-zero eigenvalues."""
        return self.B @ self.A

    @property
    def T(self) -> "Factored":
        """The transpose, (AB)^T = B^T A^T, still factored."""
        return Factored(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    @property
    def ndim(self) -> int:
        return len(self.shape)
