"""The few-row CPU linear layer: the same product as torch's, switched in only where it applies."""

from __future__ import annotations

import pytest
import torch

from shared_core.cpu_linear import SmallBatchLinear, use_small_batch_linear


@pytest.mark.parametrize("shape", [(1, 1, 24), (5, 1, 24), (1, 11, 24), (3, 4, 24), (2, 40, 24), (7, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_small_batch_linear_computes_the_same_product(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 16, bias=bias)
    fast = torch.nn.Linear(24, 16, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_small_batch_linear(fast) == 1 and type(fast) is SmallBatchLinear
    x = torch.randn(*shape)
    expected = plain(x)
    got = fast(x)
    assert got.shape == expected.shape == (*shape[:-1], 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_plain_float32_linear_layers_are_switched() -> None:
    class Adapter(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Adapter(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16),
                                torch.nn.ReLU())
    assert use_small_batch_linear(model) == 1
    assert [type(m).__name__ for m in model] == ["SmallBatchLinear", "Adapter", "Linear", "ReLU"]


def test_loaded_models_use_it(tiny_model) -> None:
    layers = [m for m in tiny_model.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(type(m) is SmallBatchLinear for m in layers)
