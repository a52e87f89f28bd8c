"""Expert buffers: built once on their own RNG streams, keyed by what shapes them, resumable."""

import dataclasses
import json

import pytest
import torch
from pydantic import ValidationError

from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.runtime import isolated_rng
from mim4dd_kit.dd_losses.mtt import MTT, buffers
from mim4dd_kit.dd_losses.mtt.buffers import (
    buffer_dir,
    buffer_key,
    ensure_buffer,
    expert_layout,
    expert_path,
    expert_seed,
    flat_parameters,
    load_expert,
    load_expert_buffers,
)
from mim4dd_kit.run.engine import Run

# 2 experts x 2 epochs on digits without augmentation: well under a second each
PARAMS = MTT.Params(num_experts=2, max_start_epoch=1, expert_epochs=1, expert_batch=512)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions are slower with threads on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_ctx(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("MDK_CACHE", str(tmp_path / "cache"))

    def make(**changes):
        changes.setdefault("augmentation", None)
        r = Run(tiny_recipe(**changes), tmp_path / "run", torch.device("cpu"),
                default_registry())
        r.setup()  # a dm recipe: the context only, no buffer yet
        return r.ctx

    return make


@pytest.fixture
def count_training(monkeypatch):
    calls: list[int] = []
    real = buffers.train_expert

    def counting(ctx, params, index, on_epoch=None):
        calls.append(index)
        return real(ctx, params, index, on_epoch)

    monkeypatch.setattr(buffers, "train_expert", counting)
    return calls


def test_built_once_then_reused(make_ctx, count_training, tmp_path):
    ctx = make_ctx()
    assert ctx.cache_dir == tmp_path / "cache"  # MDK_CACHE: never the user's cache
    rng = torch.get_rng_state()
    folder = ensure_buffer(ctx, PARAMS)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's stream is untouched
    assert count_training == [0, 1] and folder == buffer_dir(ctx, PARAMS)
    assert folder.parent == ctx.cache_dir / "buffers"
    mtimes = [expert_path(folder, i).stat().st_mtime_ns for i in range(2)]
    assert ensure_buffer(ctx, PARAMS) == folder
    assert count_training == [0, 1]  # nothing trained the second time
    assert [expert_path(folder, i).stat().st_mtime_ns for i in range(2)] == mtimes

    prov = json.loads((folder / "buffer.json").read_text())
    assert prov["key"] == folder.name and prov["experts"] == [0, 1] and prov["epochs"] == 2
    assert {"toolkit_version", "torch_version", "created", "inputs"} <= set(prov)
    assert prov["inputs"]["expert_lr"] == 0.01  # buffer.py's default, whatever lr_teacher
    assert prov["inputs"]["dataset"]["identity"]["sha256"] == ctx.data.identity["sha256"]

    traj = load_expert(folder, 0)  # (epochs + 1, P)
    with isolated_rng(expert_seed(PARAMS.buffer_seed, 0)):
        init = flat_parameters(ctx.make_backbone())
    assert traj.shape == (3, init.numel())
    assert torch.equal(traj[0], init)  # epoch 0 is the initialisation
    assert not torch.equal(traj[1], traj[0]) and not torch.equal(traj[2], traj[1])
    assert not torch.equal(load_expert(folder, 1)[0], traj[0])  # experts differ
    assert torch.equal(load_expert(folder, 0, [2, 0]), traj[[2, 0]])
    names, shapes = expert_layout(folder)
    assert names == [n for n, _ in ctx.make_backbone().named_parameters()]
    assert sum(torch.Size(s).numel() for s in shapes) == init.numel()


def test_more_experts_extend_the_same_folder(make_ctx, count_training):
    ctx = make_ctx()
    folder = ensure_buffer(ctx, PARAMS)
    more = PARAMS.model_copy(update={"num_experts": 3, "syn_steps": 7})
    assert ensure_buffer(ctx, more) == folder
    assert count_training == [0, 1, 2]
    assert json.loads((folder / "buffer.json").read_text())["experts"] == [0, 1, 2]


def test_settings_that_change_trajectories_change_the_key(make_ctx):
    ctx = make_ctx()
    key = buffer_key(ctx, PARAMS)
    changed = [
        buffer_key(ctx, PARAMS.model_copy(update={"expert_lr": 0.02})),
        buffer_key(ctx, PARAMS.model_copy(update={"expert_batch": 256})),
        buffer_key(ctx, PARAMS.model_copy(update={"buffer_seed": 1})),
        buffer_key(ctx, PARAMS.model_copy(update={"train_epochs": 5})),
        buffer_key(ctx, PARAMS.model_copy(update={"expert_momentum": 0.5})),
        buffer_key(dataclasses.replace(
            ctx, backbone_spec={**ctx.backbone_spec, "width": 16}), PARAMS),
        buffer_key(dataclasses.replace(
            ctx, dataset_spec={**ctx.dataset_spec, "split_seed": 3}), PARAMS),
        buffer_key(dataclasses.replace(
            ctx, data=dataclasses.replace(ctx.data, identity={
                **ctx.data.identity, "sha256": "0" * 64})), PARAMS),
        buffer_key(make_ctx(augmentation={"name": "dsa"}), PARAMS),
    ]
    assert len({key, *changed}) == len(changed) + 1
    # what does not change a trajectory keeps the key: expert count, distillation knobs,
    # where the data lives, the run's seed
    same = [
        buffer_key(ctx, PARAMS.model_copy(update={"num_experts": 9, "syn_steps": 3,
                                                  "batch_syn": 4, "lr_teacher": 0.001})),
        buffer_key(dataclasses.replace(ctx, seed=5), PARAMS),
        buffer_key(dataclasses.replace(
            ctx, dataset_spec={**ctx.dataset_spec, "root": "/elsewhere"}), PARAMS),
    ]
    assert set(same) == {key}
    assert ctx.dataset_spec == {"name": "digits"}  # filled in by the engine


def test_interrupted_build_resumes_with_identical_experts(make_ctx, monkeypatch, tmp_path):
    ctx = make_ctx()
    real = buffers.train_expert

    def dies_on_second(ctx, params, index, on_epoch=None):
        if index == 1:
            raise KeyboardInterrupt
        return real(ctx, params, index, on_epoch)

    monkeypatch.setattr(buffers, "train_expert", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        ensure_buffer(ctx, PARAMS)
    folder = buffer_dir(ctx, PARAMS)
    assert expert_path(folder, 0).exists() and not expert_path(folder, 1).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["buffer.json",
                                                        "expert_0000.safetensors"]
    mtime = expert_path(folder, 0).stat().st_mtime_ns

    calls: list[int] = []

    def counting(ctx, params, index, on_epoch=None):
        calls.append(index)
        return real(ctx, params, index, on_epoch)

    monkeypatch.setattr(buffers, "train_expert", counting)
    assert ensure_buffer(ctx, PARAMS) == folder
    assert calls == [1] and expert_path(folder, 0).stat().st_mtime_ns == mtime
    # the same experts as a build that was never interrupted
    straight = ensure_buffer(dataclasses.replace(ctx, cache_dir=tmp_path / "other"), PARAMS)
    for i in range(2):
        assert torch.equal(load_expert(folder, i), load_expert(straight, i))


def test_batchnorm_statistics_are_recorded(make_ctx):
    ctx = make_ctx(backbone={"name": "convnet", "width": 8, "depth": 2, "norm": "batch"})
    params = PARAMS.model_copy(update={"num_experts": 1})
    folder = ensure_buffer(ctx, params)
    bufs = load_expert_buffers(folder, 0, [0, 2])
    assert bufs["blocks.0.1.running_mean"].shape == (2, 8)
    assert torch.equal(bufs["blocks.0.1.running_mean"][0], torch.zeros(8))  # at init
    assert not torch.equal(bufs["blocks.0.1.running_mean"][1], torch.zeros(8))
    assert bufs["blocks.0.1.num_batches_tracked"].tolist() == [0, 2 * 3]  # 1437 / 512


def test_missing_expert_and_too_short_training_are_errors(tmp_path):
    from mim4dd_kit.core.errors import DataError

    with pytest.raises(DataError, match="expert 0 is missing"):
        load_expert(tmp_path, 0)
    with pytest.raises(ValidationError, match="train_epochs must be at least"):
        MTT.Params(max_start_epoch=5, expert_epochs=2, train_epochs=5)
    MTT.Params(max_start_epoch=5, expert_epochs=2, train_epochs=6)  # the latest target


# ------------------------------------------------------- mdk buffer for any trajectory loss

_TRAJ_MODULE = '''
import torch
from mim4dd_kit.api import DDLoss, ExpertBuffers, Params

class Trajectories(DDLoss):
    """A third-party loss that matches trajectories of its own experts."""
    needs_expert_buffers = True

    class Params(Params):
        experts: int = 2

    @classmethod
    def build_expert_buffers(cls, params, *, ctx, progress=False):
        folder = ctx.cache_dir / "traj" / ctx.data.identity["sha256"][:8]
        folder.mkdir(parents=True, exist_ok=True)
        trained = 0
        for i in range(params.experts):
            path = folder / f"{i}.pt"
            if not path.exists():
                torch.save(ctx.make_backbone().state_dict(), path)
                trained += 1
        return ExpertBuffers(path=folder, experts=params.experts, trained=trained, epochs=0)

class Forgetful(DDLoss):
    """Says it needs buffers but cannot build them."""
    needs_expert_buffers = True

    class Params(Params):
        pass
'''


def test_mdk_buffer_serves_any_loss_that_needs_expert_buffers(tmp_path, monkeypatch):
    import sys

    import yaml
    from helpers import TINY

    from mim4dd_kit.config.registry import Registry
    from mim4dd_kit.core.errors import PluginError, RecipeError
    from mim4dd_kit.run.buffer import buffer_for_recipe

    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_traj.py").write_text(_TRAJ_MODULE)
    info = site / "fake_traj-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-traj\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mdk.dd_losses]\ntraj = fake_traj:Trajectories\nforgetful = fake_traj:Forgetful\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MDK_CACHE", str(tmp_path / "cache"))
    reg = Registry(path=[str(site), *sys.path])

    def recipe(loss):
        path = tmp_path / f"{loss['name']}.yaml"
        path.write_text(yaml.safe_dump({**TINY, "dd_loss": loss}, sort_keys=False))
        return path

    first = buffer_for_recipe(recipe({"name": "traj", "experts": 3}), registry=reg)
    assert first["experts"] == 3 and first["trained"] == 3 and first["epochs"] == 0
    assert first["path"].startswith(str(tmp_path / "cache"))
    assert sorted(p.name for p in tmp_path.joinpath(first["path"]).iterdir()) == [
        "0.pt", "1.pt", "2.pt"]
    again = buffer_for_recipe(recipe({"name": "traj", "experts": 4}), registry=reg)
    assert again["trained"] == 1 and again["path"] == first["path"]
    with pytest.raises(PluginError, match="'forgetful'.*build_expert_buffers"):
        buffer_for_recipe(recipe({"name": "forgetful"}), registry=reg)
    with pytest.raises(RecipeError, match="dd_loss is 'dm'"):
        buffer_for_recipe(recipe({"name": "dm"}), registry=reg)


def test_conformance_check_asks_a_buffer_loss_for_its_builder(make_ctx):
    from mim4dd_kit import testing
    from mim4dd_kit.api import DDLoss
    from mim4dd_kit.api import Params as BaseParams

    class Forgetful(DDLoss):
        needs_expert_buffers = True

        class Params(BaseParams):
            pass

    ctx = make_ctx()
    with pytest.raises(AssertionError, match="implement build_expert_buffers"):
        testing.check_builds_from_params(Forgetful, "dd_losses", ctx=ctx)
    built = testing.check_builds_from_params(MTT, "dd_losses", PARAMS, ctx=ctx)
    assert built.needs_expert_buffers and not DDLoss.needs_expert_buffers
