"""Faster linear layers for the few-row matrix products of batched decoding on CPU.

Batched decoding multiplies a handful of rows (best-of-n samples, lookahead candidates, Transfer Q*
rollouts) by each weight matrix. PyTorch's CPU ``linear`` (``x @ W.T``) takes a slow path for 2 to 32
rows: on a 2-core AVX-512 machine a 5-row forward of the embedded model costs 1.5x a 1-row one, while
the same product written as ``(W @ x.T).T`` costs about what one row does. With one torch thread
the gain is gone (the transposed product measured 1.0-1.6x slower at 2-16 rows of SmolLM2's layers),
so only multi-threaded runs take it. The result is the same product (rounding may differ in the last
bits, as between any two BLAS kernels). One row, and long prefills, keep PyTorch's own path.
"""

from __future__ import annotations

import torch

__all__ = [
    "SMALL_BATCH_ROWS",
    "SmallBatchLinear",
    "takes_transposed_product",
    "use_small_batch_linear",
]

#: Row counts (tokens across the batch) that take the transposed product.
SMALL_BATCH_ROWS = range(2, 33)


def takes_transposed_product(rows: int) -> bool:
    """Whether a product of ``rows`` rows is computed as ``(W @ x.T).T``: 2-32 rows, more than one torch thread."""
    return rows in SMALL_BATCH_ROWS and torch.get_num_threads() > 1


class SmallBatchLinear(torch.nn.Linear):
    """``torch.nn.Linear`` computing ``(W @ x.T).T`` where that pays (:func:`takes_transposed_product`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not takes_transposed_product(rows):
            return super().forward(x)
        flat = x.reshape(rows, self.in_features)
        out = (self.weight @ flat.T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_small_batch_linear(model: torch.nn.Module) -> int:
    """Switches every plain ``torch.nn.Linear`` of a CPU float32 model to :class:`SmallBatchLinear`.

    Returns how many layers were switched. Subclasses of ``Linear`` (quantized or adapter layers) and
    models on other devices or dtypes are left alone.
    """
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" \
                and module.weight.dtype == torch.float32:
            module.__class__ = SmallBatchLinear
            switched += 1
    return switched
