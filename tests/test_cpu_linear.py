"""The few-row CPU linear layer: the same product as torch's, switched in only where it applies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from shared_core.cpu_linear import SmallBatchLinear, takes_transposed_product, use_small_batch_linear


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two torch threads, where the transposed product is taken (restored after the test)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_the_transposed_product_is_taken_only_for_few_rows_with_several_threads() -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert [takes_transposed_product(rows) for rows in (1, 2, 32, 33)] == [False, True, True, False]
        torch.set_num_threads(1)
        assert not any(takes_transposed_product(rows) for rows in (1, 2, 8, 32))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(1, 1, 24), (5, 1, 24), (1, 11, 24), (3, 4, 24), (2, 40, 24), (7, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_small_batch_linear_computes_the_same_product(shape: tuple[int, ...], bias: bool, two_threads: None) -> None:
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
