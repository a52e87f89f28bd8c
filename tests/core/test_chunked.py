import contextlib
import os

import pytest
import torch

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.training import chunked, compiled
from mim4dd_kit.training.compiled import cpu_compiler_available
from mim4dd_kit.training.stats import class_means


def _net(norm="instance", width=8):
    torch.manual_seed(0)
    return ConvNet(ConvNet.Params(width=width, depth=2, norm=norm), channels=1,
                   num_classes=3, image_size=(8, 8))


def test_chunk_size_follows_the_largest_activation():
    net = _net(width=8)  # grey 8x8 pads to 12x12: block 1 is 8 x 12 x 12 before pooling
    x = torch.zeros(1000, 1, 8, 8)
    per_image = 8 * 12 * 12 * 4  # bytes
    assert chunked.chunk_size(net, x, budget=per_image * 10) == 10
    assert chunked.chunk_size(net, x, budget=1) == 1
    assert chunked.chunk_size(net, x, budget=2**40) == 1000


def test_batch_norm_in_training_is_never_chunked():
    net = _net(norm="batch").train()
    x = torch.randn(64, 1, 8, 8)
    assert chunked.couples_samples(net)
    assert chunked.chunk_size(net, x, budget=1) == 64
    net.eval()  # running statistics: samples are independent again
    assert not chunked.couples_samples(net)
    assert chunked.chunk_size(net, x, budget=1) == 1


@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_chunked_features_equal_the_whole_batch(chunk):
    net = _net()
    x = torch.randn(64, 1, 8, 8)
    whole = net.features(x)
    parts = chunked.features(net, x, chunk=chunk)
    assert [p.shape for p in parts] == [w.shape for w in whole]
    for p, w in zip(parts, whole, strict=True):
        torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)
        assert not p.requires_grad


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_features_through_a_view_equal_the_view_of_the_whole_batch(chunk):
    net = _net()
    x = torch.randn(64, 1, 8, 8)

    def view(fs):  # a block flattened and every block's per-channel means
        return [fs[-1].flatten(1), *(f.flatten(2).mean(2) for f in fs)]

    whole = view(net.features(x))
    parts = chunked.features(net, x, chunk=chunk, view=view)
    assert [p.shape for p in parts] == [w.shape for w in whole]
    for p, w in zip(parts, whole, strict=True):
        torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)


def test_class_sums_equal_class_means_times_counts():
    net = _net()
    x = torch.randn(30, 1, 8, 8)
    y = torch.tensor([0, 1, 2] * 10)
    sums = chunked.class_sums(net, x, y, 3, chunk=4)
    means = class_means(net.features(x)[-1].flatten(1), y, 3)
    torch.testing.assert_close(sums / 10, means, rtol=1e-5, atol=1e-6)


def test_logits_equal_forward():
    net = _net().eval()
    x = torch.randn(25, 1, 8, 8)
    torch.testing.assert_close(chunked.logits(net, x, chunk=6), net(x), rtol=1e-5, atol=1e-6)


def test_chunked_passes_run_a_channels_last_twin_and_leave_the_network_alone():
    net = _net()
    x = torch.randn(40, 1, 8, 8)
    seen = []
    hook = net.blocks[0][0].register_forward_hook(lambda m, i, o: seen.append(m))
    chunked.features(net, x, chunk=8)
    hook.remove()
    # (deepcopy carries the hook over) the twin ran, not the caller's network
    assert seen and all(m is not net.blocks[0][0] for m in seen)
    assert net.blocks[0][0].weight.is_contiguous()  # still NCHW
    whole = chunked.features(net, x, chunk=len(x))  # one chunk: the network itself
    torch.testing.assert_close(chunked.features(net, x, chunk=8)[0], whole[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_chunked_passes_give_the_same_bits_for_any_number_of_workers(workers):
    """Each chunk runs on one thread and partial results combine in chunk order, so the
    results do not depend on how many workers (threads, load) computed them."""
    net = _net()
    x = torch.randn(50, 1, 8, 8)
    y = torch.arange(50) % 3
    ref_sums, ref_feats = _one_thread_reference(net, x, y)
    sums = torch.zeros_like(ref_sums)
    for p in chunked.map_chunks(
            lambda i, j: torch.zeros_like(ref_sums).index_add_(
                0, y[i:j], chunked._fast_twin(net).features(x[i:j])[-1].flatten(1)),
            len(x), 7, workers=workers):
        sums += p
    assert torch.equal(sums, ref_sums)
    with _threads(2):  # the passes themselves, with their default workers
        assert torch.equal(chunked.class_sums(net, x, y, 3, chunk=7), ref_sums)
        for got, want in zip(chunked.features(net, x, chunk=7), ref_feats, strict=True):
            assert torch.equal(got, want)


def _one_thread_reference(net, x, y):
    """class_sums / features computed chunk by chunk in this thread, one torch thread."""
    twin = chunked._fast_twin(net)
    with _threads(1), torch.no_grad():
        chunks = [twin.features(x[i:i + 7]) for i in range(0, len(x), 7)]
        parts = [torch.zeros(3, f[-1][0].numel()).index_add_(0, y[i * 7:i * 7 + 7],
                                                             f[-1].flatten(1))
                 for i, f in enumerate(chunks)]
        sums = parts[0]
        for p in parts[1:]:
            sums += p
        feats = [torch.cat(f) for f in zip(*chunks, strict=True)]
    return sums, feats


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_chunk_workers_run_one_thread_without_autograd_under_the_callers_autocast():
    with _threads(2):
        seen = list(chunked.map_chunks(
            lambda i, j: (torch.get_num_threads(), torch.is_grad_enabled(),
                          torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
            10, 5))
        assert seen == [(1, False, False, torch.get_autocast_dtype("cpu"))] * 2
        assert torch.get_num_threads() == 2  # the caller's thread count is its own
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seen = list(chunked.map_chunks(
                lambda i, j: (torch.is_autocast_enabled("cpu"),
                              torch.get_autocast_dtype("cpu")), 10, 5))
        assert seen == [(True, torch.bfloat16)] * 2


def test_chunk_results_come_back_in_order_and_errors_reach_the_caller():
    with _threads(2):
        assert list(chunked.map_chunks(lambda i, j: (i, j), 10, 3)) == [
            (0, 3), (3, 6), (6, 9), (9, 10)]

        def fail(i, j):
            if i == 6:
                raise RuntimeError("chunk 6 failed")
            return i

        with pytest.raises(RuntimeError, match="chunk 6 failed"):
            list(chunked.map_chunks(fail, 10, 3))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_chunk_pool_is_rebuilt_in_a_forked_child():
    with _threads(2):
        list(chunked.map_chunks(lambda i, j: i, 4, 2))  # the parent's pool exists
        pid = os.fork()
        if pid == 0:  # child: the parent's worker threads do not exist here
            code = 0 if list(chunked.map_chunks(lambda i, j: i, 4, 2)) == [0, 2] else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_serial_first_runs_the_first_and_odd_last_chunk_alone_then_keeps_the_order():
    import threading

    started, lock = [], threading.Lock()

    def fn(i, j):
        with lock:
            started.append(i)
        return (i, j)

    with _threads(2):
        got = list(chunked.map_chunks(fn, 23, 5, serial_first=True))
    assert got == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert started[:2] == [0, 20]  # the first chunk, then the last (3 images, not 5)
    started.clear()
    with _threads(2):
        list(chunked.map_chunks(fn, 20, 5, serial_first=True))
    assert started[0] == 0 and sorted(started) == [0, 5, 10, 15]


@pytest.mark.skipif(not cpu_compiler_available(),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_passes_equal_the_eager_ones_and_do_not_depend_on_the_workers():
    net = _net()
    x = torch.randn(50, 1, 8, 8)
    y = torch.arange(50) % 3
    eager = chunked.features(net, x, chunk=7)
    runs = []
    for workers in (1, 2):
        with _threads(workers):
            runs.append((chunked.features(net, x, chunk=7, compiled=True),
                         chunked.class_sums(net, x, y, 3, chunk=7, compiled=True),
                         chunked.logits(net.eval(), x, chunk=7, compiled=True)))
        net.train()
    assert compiled.PASSES.broken is None
    for got, want in zip(runs[0][0], eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[0][1], chunked.class_sums(net, x, y, 3, chunk=7),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runs[0][2], chunked.logits(net.eval(), x, chunk=7),
                               rtol=1e-4, atol=1e-5)
    one, two = runs
    assert all(torch.equal(a, b) for a, b in zip(one[0], two[0], strict=True))
    assert torch.equal(one[1], two[1]) and torch.equal(one[2], two[2])


def test_a_failing_compilation_warns_once_and_the_passes_run_uncompiled(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(compiled, "PASSES", compiled.CompiledPasses())
    net = _net()
    x = torch.randn(30, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="compile_passes: torch.compile failed "
                                            r"\(RuntimeError: no compiler here\)"):
        got = chunked.features(net, x, chunk=7, compiled=True)
    for a, b in zip(got, chunked.features(net, x, chunk=7), strict=True):
        assert torch.equal(a, b)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        chunked.logits(net.eval(), x, chunk=7, compiled=True)


@pytest.mark.parametrize("setting,device,iterations,expected", [
    ("auto", "cpu", 200, True), ("auto", "cpu", 199, False), ("auto", "cuda", 5000, False),
    (True, "cpu", 3, True), (False, "cpu", 5000, False), (True, "cuda", 5000, False),
])
def test_compile_passes_setting(setting, device, iterations, expected):
    from mim4dd_kit.config.performance import PerformanceSettings, compile_passes

    settings = PerformanceSettings(compile_passes=setting)
    assert compile_passes(settings, torch.device(device), iterations) is expected


def test_an_error_of_the_network_itself_is_not_blamed_on_compilation(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = the same call
    monkeypatch.setattr(compiled, "PASSES", compiled.CompiledPasses())
    net = _net()

    def broken_features(x):
        raise ValueError("the network's own bug")

    monkeypatch.setattr(net, "features", broken_features)
    with pytest.raises(ValueError, match="own bug"):
        compiled.PASSES.features(net, torch.randn(4, 1, 8, 8))
    assert compiled.PASSES.broken is None
