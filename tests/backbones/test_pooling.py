"""The ConvNet's 2x2 average pool: its CPU path computes what ``avg_pool2d`` does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mim4dd_kit.backbones.pooling import AvgPool2x2


def _pool_and_grad(pool, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = pool(x)
    (grad,) = torch.autograd.grad(y, x, g)
    return y.detach(), grad


@pytest.mark.parametrize("shape", [(3, 5, 8, 6), (2, 4, 32, 32), (5, 4, 2), (4, 8, 10)])
def test_values_and_gradient_equal_avg_pool2d(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    g = torch.randn(*shape[:-2], shape[-2] // 2, shape[-1] // 2, generator=gen)
    y, grad = _pool_and_grad(AvgPool2x2(), x, g)
    y_ref, grad_ref = _pool_and_grad(lambda t: F.avg_pool2d(t, 2, 2), x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    assert torch.equal(grad, grad_ref)  # a quarter of the output gradient in every window


@pytest.mark.parametrize("make", [
    lambda x: x[..., :7, :],                                    # odd height
    lambda x: x.contiguous(memory_format=torch.channels_last),  # NHWC
])
def test_other_inputs_take_avg_pool2d_exactly(make):
    x = make(torch.randn(2, 3, 8, 8))
    assert torch.equal(AvgPool2x2()(x), F.avg_pool2d(x, 2, 2))


@pytest.mark.parametrize("x", [torch.randn(2, 2, 2, 4, 4), torch.randn(2, 3, 0, 4)])
def test_inputs_avg_pool2d_refuses_are_refused(x):
    with pytest.raises(RuntimeError):  # 3-D or 4-D input with non-empty maps only
        AvgPool2x2()(x)


def test_second_order_gradients_are_exact():
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    pool = AvgPool2x2()
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))


def test_double_backward_through_a_network_gradient_matches_avg_pool2d():
    """DC-style: the gradient of a function of weight gradients, through the pool."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    x0 = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)

    def image_grad(pool):
        x = x0.clone().requires_grad_()
        wt = w.clone().requires_grad_()
        h = pool(torch.tanh(F.conv2d(x, wt, padding=1)))
        (gw,) = torch.autograd.grad(h.square().sum(), wt, create_graph=True)
        (gx,) = torch.autograd.grad(gw.square().sum(), x)
        return gx

    reference = image_grad(lambda t: F.avg_pool2d(t, 2, 2))
    torch.testing.assert_close(image_grad(AvgPool2x2()), reference, rtol=1e-12, atol=1e-12)


def test_vmap_of_grad_equals_a_loop():
    """DSA takes per-class gradients with torch.func; the pool must follow."""
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(3, 5, 2, 8, 8, generator=gen)  # 3 groups of 5 images
    w = torch.randn(4, 2, 3, 3, generator=gen)
    pool = AvgPool2x2()

    def loss(wt, x):
        return pool(F.relu(F.conv2d(x, wt, padding=1))).square().mean()

    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    looped = torch.stack([torch.func.grad(loss)(w, x) for x in xs])
    torch.testing.assert_close(batched, looped)
    reference = torch.stack([torch.func.grad(
        lambda wt, x: F.avg_pool2d(F.relu(F.conv2d(x, wt, padding=1)), 2).square().mean())(w, x)
        for x in xs])
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-7)


# torch.func.jvp scripts a helper of its own, which torch itself reports as deprecated
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_forward_mode_derivative_is_the_pool_of_the_tangent():
    x, t = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    _, derivative = torch.func.jvp(AvgPool2x2(), (x,), (t,))
    torch.testing.assert_close(derivative, F.avg_pool2d(t, 2, 2), rtol=0, atol=1e-6)


def test_cpu_nchw_input_takes_the_fast_path_and_others_do_not():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert type(AvgPool2x2()(x).grad_fn).__name__ == "_AvgPool2x2Backward"
    odd = torch.randn(2, 3, 7, 8, requires_grad=True)
    assert type(AvgPool2x2()(odd).grad_fn).__name__ == "AvgPool2DBackward0"
