"""CudaGraphModel and optimize's cudagraph backend: the eval model's function, replayed from a CUDA graph.

Most of these need a CUDA device and skip without one; the argument checks and
the timing's device plumbing run everywhere.
"""

import pytest
import torch
from torch import nn

import sepconv
import sepconv.utils.timing
from sepconv import SeparableConv2d
from sepconv.backends.cuda_graph import CudaGraphModel, capture

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def ieee_float32(monkeypatch):
    """Full float32 convolutions: the comparisons across memory layouts below would otherwise see TF32's rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(SeparableConv2d(4, 8, 3, padding=1, dw_norm="bn", pw_norm="bn", pw_act="relu"),
                        SeparableConv2d(8, 6, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in net.modules():  # non-trivial statistics, as training leaves them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eval mode"):
        CudaGraphModel(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="CUDA device.*cpu"):
        CudaGraphModel(nn.Conv2d(1, 1, 1).eval(), torch.randn(1, 1, 4, 4))
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        CudaGraphModel(nn.Conv2d(1, 1, 1).eval(), [1.0])
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        capture(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="'cudagraph', which needs a sample_input on a CUDA device"):
        sepconv.optimize(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 4, 4), backends=("cudagraph",))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_optimize_times_on_the_sample_device(monkeypatch, device):
    """On CUDA a sample that does not synchronize times only the launches: optimize must pass its device."""
    seen = []
    from sepconv.utils import timing

    real = timing.interleaved

    def spy(candidates, **kwargs):
        seen.append(kwargs.get("device"))
        return real(candidates, **kwargs)

    monkeypatch.setattr(timing, "interleaved", spy)  # sepconv.backends.clock.time_candidates reads it per call
    # wall-clock timing, the one that takes a device (with one CPU thread optimize times on CPU time instead)
    monkeypatch.setattr("sepconv.backends.clock.CPU_CLOCK_WITH_ONE_THREAD", False)
    x = torch.randn(2, 4, 8, 8, device=device)
    sepconv.optimize(small_net().to(device), x, rounds=1, backends=("eager",))
    assert seen and all(d == x.device for d in seen)


@cuda
def test_replays_compute_the_eval_model_and_outputs_are_not_overwritten():
    net = small_net().cuda()
    x1, x2 = torch.randn(3, 4, 16, 16, device="cuda"), torch.randn(3, 4, 16, 16, device="cuda")
    graphed = CudaGraphModel(net, x1)
    with torch.no_grad():
        want1, want2 = net(x1), net(x2)
        got1 = graphed(x1)
        got2 = graphed(x2)
    torch.testing.assert_close(got2, want2)
    torch.testing.assert_close(got1, want1)  # the second replay did not overwrite the first call's output
    assert got1.data_ptr() != got2.data_ptr()
    raw = CudaGraphModel(net, x1, clone_output=False)
    with torch.no_grad():
        assert raw(x1).data_ptr() == raw(x2).data_ptr()  # documented: the graph's own output, rewritten per call


@cuda
def test_other_inputs_run_eagerly():
    net = small_net().cuda()
    x = torch.randn(2, 4, 16, 16, device="cuda")
    graphed = CudaGraphModel(net, x)
    other = torch.randn(5, 4, 12, 12, device="cuda")  # another shape
    with torch.no_grad():
        torch.testing.assert_close(graphed(other), net(other))
        cl = x.contiguous(memory_format=torch.channels_last)  # another layout: copied into the recorded buffer
        assert graphed.recorded_for(cl)
        torch.testing.assert_close(graphed(cl), net(x))
    assert not graphed.recorded_for(x.double()) and not graphed.recorded_for(x[:1])
    xg = x.clone().requires_grad_(True)  # grad wanted: eager, with autograd
    graphed(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


@cuda
def test_in_place_parameter_updates_are_replayed():
    net = small_net().cuda()
    x = torch.randn(2, 4, 16, 16, device="cuda")
    graphed = CudaGraphModel(net, x)
    with torch.no_grad():
        before = graphed(x)
        for p in net.parameters():
            p.mul_(0.5)
        after = graphed(x)
        torch.testing.assert_close(after, net(x))
    assert not torch.allclose(before, after)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimize_on_cuda_measures_graphs(dtype):
    net = small_net().cuda().to(dtype)
    x = torch.randn(2, 4, 16, 16, device="cuda", dtype=dtype)
    fast = sepconv.optimize(net, x, rounds=2)
    assert {"nchw", "channels_last", "cudagraph", "cudagraph_channels_last", "cudnn_relu", "cudnn_relu_channels_last",
            "cudagraph_cudnn_relu", "cudagraph_cudnn_relu_channels_last"} <= set(fast.timings_ms)  # a ReLU to fuse
    assert fast.candidate in fast.timings_ms
    with torch.no_grad():  # against the unfolded float32 model (BatchNorm folded in bfloat16 rounds differently)
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(fast(x).float(), small_net().cuda()(x.float()), rtol=tol, atol=tol)
    only = sepconv.optimize(net, x, backends=("cudagraph",), measure=False)
    assert only.backend == "cudagraph" and isinstance(only.model, CudaGraphModel)


class _HostSync(nn.Module):
    def forward(self, x):
        return x * float(x.abs().max().item())  # a host round trip: recording a graph rejects it


@cuda
def test_a_model_that_cannot_be_recorded_falls_back_with_a_warning():
    model, x = _HostSync().eval(), torch.randn(2, 3, device="cuda")
    with pytest.warns(UserWarning, match="skipping the cudagraph backend"):
        fast = sepconv.optimize(model, x, rounds=1)
    assert fast.backend == "eager"
    with pytest.raises(RuntimeError, match="the cudagraph backend failed"):
        sepconv.optimize(model, x, backends=("cudagraph",))
