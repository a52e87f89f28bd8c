"""Multi-process runs (torch.distributed, gloo on the CPU) against single-process runs.

Sharded runs sum the same terms in a different order, so images and logged losses agree
with the single-process run to a tolerance: ATOL on images (normalised pixel space) and
RTOL on losses; evaluation, which splits whole networks over ranks, agrees exactly.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers import MIM, TINY, merged

from mim4dd_kit.api import Shard
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core import distributed
from mim4dd_kit.core.errors import RecipeError, RunError
from mim4dd_kit.io.synthetic import load_synthetic
from mim4dd_kit.run.engine import Run, launch_run, run
from mim4dd_kit.run.evaluate import evaluate
from mim4dd_kit.run.runlog import TIME_KEYS
from mim4dd_kit.training.mi import mi_lower_bound, nce_loss
from mim4dd_kit.training.stats import class_means, class_sums, means_over_ranks

ATOL = 1e-5  # images, after 6 iterations at lr 1 (observed: about 1e-6)
RTOL = 1e-5  # logged losses
EVAL = {"name": "train_from_scratch", "models": 2, "epochs": 3, "batch_size": 64}
#: gradient matching on a network trained in between (3 image updates per network)
GM = {"outer_loop": 3, "inner_loop": 1, "batch_train": 16}


# ------------------------------------------------------------------------- in-process


def test_shard_rows_split_every_class_like_tensor_split():
    labels = torch.tensor([2, 0, 1, 0, 0, 2, 1, 0, 0, 1, 2, 2, 2])  # counts 5, 3, 5
    kept = [Shard(r, 3).rows(labels, num_classes=4) for r in range(3)]
    for c in range(3):
        rows_c = (labels == c).nonzero().squeeze(1)
        for r, part in enumerate(torch.tensor_split(rows_c, 3)):
            assert torch.equal(kept[r][labels[kept[r]] == c], part)
    everything = torch.cat(kept).sort().values
    assert torch.equal(everything, torch.arange(len(labels)))  # disjoint, complete
    assert torch.equal(Shard().rows(labels, 4), torch.arange(len(labels)))
    # fewer rows of a class than ranks: the last ranks get none of it
    assert Shard(1, 2).rows(torch.tensor([0, 1, 1]), 2).tolist() == [2]


def test_class_means_are_unchanged_outside_a_group():
    x, y = torch.randn(12, 5), torch.arange(12) % 4
    expected = torch.stack([x[y == c].mean(0) for c in range(4)])
    assert torch.allclose(class_means(x, y, 4), expected, atol=1e-6)
    assert torch.equal(means_over_ranks(*class_sums(x, y, 4), Shard()), class_means(x, y, 4))


def test_nce_of_column_blocks_with_global_counts_sums_to_the_full_loss():
    torch.manual_seed(0)
    scores = torch.randn(6, 10, requires_grad=True)
    positive = torch.randint(0, 3, (6, 1)) == torch.randint(0, 3, (1, 10))
    full = nce_loss(scores, positive, num_classes=3)
    (g_full,) = torch.autograd.grad(full, scores)
    n_pos = positive.sum().float()
    counts = (n_pos, positive.numel() - n_pos)
    blocks = [slice(0, 4), slice(4, 7), slice(7, 10)]
    parts = [nce_loss(scores[:, b], positive[:, b], 3, counts) for b in blocks]
    assert torch.allclose(sum(parts), full, rtol=1e-6)
    (g_parts,) = torch.autograd.grad(sum(parts), scores)
    assert torch.allclose(g_parts, g_full, rtol=1e-6, atol=1e-8)
    # without counts the old behaviour: each block normalised by its own pairs
    assert not torch.allclose(sum(nce_loss(scores[:, b], positive[:, b], 3) for b in blocks),
                              full)
    bounds = [mi_lower_bound(scores[:, b], positive[:, b], 3, n_pos) for b in blocks]
    full_bound = mi_lower_bound(scores, positive, 3)
    assert float(sum(bounds).detach()) - 2 * math.log(2) == pytest.approx(
        float(full_bound.detach()), abs=1e-6)


def _unshardable_losses() -> list[str]:
    reg = default_registry()
    return [n for n in reg.names("dd_losses")
            if not getattr(reg.load("dd_losses", n), "shardable", False)]


def test_sharded_run_refuses_a_loss_that_cannot_split_its_batch(tmp_path):
    names = _unshardable_losses()
    if not names:
        pytest.skip("every installed dd loss supports sharding")
    recipe = validate_recipe(merged(TINY, {"dd_loss": {"name": names[0]}}))
    r = Run(recipe, tmp_path, torch.device("cpu"), default_registry())
    r.shard = Shard(0, 2)
    with pytest.raises(RecipeError, match=rf"dd_loss '{names[0]}' cannot split.*: .*dm"):
        r.setup()


def test_sharded_dm_refuses_batchnorm(tmp_path):
    recipe = validate_recipe(merged(TINY, {"backbone": {"norm": "batch"}}))
    r = Run(recipe, tmp_path, torch.device("cpu"), default_registry())
    r.shard = Shard(0, 2)
    with pytest.raises(Exception, match="BatchNorm"):
        r.setup()


def test_sharded_gradient_matching_needs_a_real_row_per_rank(tmp_path):
    recipe = validate_recipe(merged(TINY, {"dd_loss": {"name": "dc"}, "augmentation": None,
                                           "synthetic": {"batch_real": 1}}))
    r = Run(recipe, tmp_path, torch.device("cpu"), default_registry())
    r.shard = Shard(1, 2)
    r.setup()
    with pytest.raises(RunError, match="at least that many real images per class"):
        r.step(0)  # refused before any collective


def test_child_errors_become_toolkit_errors():
    ok = {"ok": True, "value": 1}

    def failed(exc, **kw):
        return {"ok": False, "type": type(exc).__name__, "message": str(exc),
                "mdk": False, "interrupt": False, "error": exc, **kw}

    with pytest.raises(RunError, match="process 1 of 2 failed: ValueError: bad width"):
        distributed._raise_child_error([ok, failed(ValueError("bad width"))], None)
    # the toolkit error wins over a peer's lost connection
    with pytest.raises(RecipeError, match="no such key"):
        distributed._raise_child_error(
            [failed(RuntimeError("connection closed")),
             failed(RecipeError("no such key"), mdk=True)], None)
    with pytest.raises(KeyboardInterrupt):
        distributed._raise_child_error([failed(KeyboardInterrupt(), interrupt=True), ok], None)
    with pytest.raises(RunError, match="ended without finishing"):
        distributed._raise_child_error([ok, None], "process 1 terminated with signal SIGKILL")
    distributed._raise_child_error([ok, ok], None)


# ------------------------------------------------------------------- two processes


def _runs_in_one_group(recipes: dict[str, dict], root: str) -> dict:
    """Body of each process: run every recipe into root/<name>, then interrupt the
    ``mim`` recipe's run after 3 iterations and resume it; record the files replaced."""
    distributed.init_from_env("cpu")  # one group for all runs
    writes: list[str] = []
    real_replace = os.replace

    def traced(src, dst, *args, **kwargs):
        writes.append(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    def interrupt(iteration, logs):
        if iteration == 3:
            raise KeyboardInterrupt

    os.replace = traced
    try:
        results = {name: run(validate_recipe(d), out=Path(root) / name, progress=False)
                   for name, d in recipes.items()}
        mim = validate_recipe(recipes["mim"])
        try:
            run(mim, out=Path(root) / "resumed", progress=False, callbacks=[interrupt])
        except KeyboardInterrupt:
            pass
        results["resumed"] = run(mim, out=Path(root) / "resumed", progress=False,
                                 resume=True, evaluate=False)
    finally:
        os.replace = real_replace
    return {"rank": distributed.world(), "writes": writes, "results": results}


def _losses(path: Path) -> list[dict]:
    """The logged values of each iteration, without the times (which differ per run)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in rows]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    short = {"iterations": 3}
    recipes = {
        "mim": merged(TINY, {"regularizer": MIM, "evaluators": [EVAL]}),
        "dm": merged(TINY, {}),
        # CRD's Z (a mean over all ranks' columns), critic-only steps and rho's split
        # gradients (norms of the summed gradients), with diagnostics every iteration
        "stable": merged(TINY, {"synthetic": short, "regularizer": {
            "name": "mim4dd", "critic": MIM["critic"], "preset": "stable",
            "critic_warmup": 2, "ramp": 2, "diagnostics_every": 1}}),
        # the default preset: no critic network, centred embeddings (the real mean over
        # all ranks), rho 1
        "critic_free": merged(TINY, {"synthetic": short, "regularizer": {
            "name": "mim4dd", "ramp": 2, "diagnostics_every": 1}}),
        "dsa": merged(TINY, {"regularizer": MIM, "synthetic": short,
                             "dd_loss": {"name": "dsa", **GM}}),
        "dsa_kmeans": merged(TINY, {"synthetic": short, "dd_loss": {
            "name": "dsa_kmeans", **GM, "clusters": 5, "pool": 24, "kmeans_iters": 5}}),
    }
    ranks = distributed.launch(2, _runs_in_one_group, recipes, str(tmp_path / "multi"),
                               threads=1)
    assert [r["rank"] for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[1]["writes"] == []  # rank 0 alone writes
    written = {Path(w).relative_to(tmp_path / "multi").as_posix() for w in ranks[0]["writes"]}
    assert {"mim/synthetic.safetensors", "mim/losses.jsonl", "mim/checkpoint.safetensors",
            "dm/synthetic.safetensors", "resumed/synthetic.safetensors"} <= written
    for name in recipes:
        multi = load_synthetic(tmp_path / "multi" / name / "synthetic.safetensors")
        single = load_synthetic(run(validate_recipe(recipes[name]), out=tmp_path / "single" /
                                    name, progress=False, evaluate=False).synthetic_path)
        diff = (multi.images - single.images).abs().max().item()
        assert diff <= ATOL, f"{name}: images differ by {diff}"
        assert torch.equal(multi.labels, single.labels)
        a = _losses(tmp_path / "multi" / name / "losses.jsonl")
        b = _losses(tmp_path / "single" / name / "losses.jsonl")
        assert len(a) == len(b) == validate_recipe(recipes[name]).synthetic.iterations
        assert ("regularizer" not in recipes[name]) or {"loss_reg", "nce1"} <= set(a[0])
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                # MI bounds and score means are differences of O(1) float32 sums that can
                # land near 0 (a sharded Z differs in its last bits): an absolute tolerance
                tol = 1e-5 if key[:2] == "mi" or key[:3] in ("pos", "neg") else 0
                assert x[key] == pytest.approx(y[key], rel=RTOL, abs=tol), (name, key)
        assert multi.metadata["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert not (tmp_path / "multi" / name / "checkpoint.safetensors").exists()
    # evaluation: one network per rank, joined; the same as one process on the same set
    evals = [r["results"]["mim"].evaluations["train_from_scratch"] for r in ranks]
    assert evals[0]["accuracies"] == evals[1]["accuracies"]
    path = tmp_path / "multi" / "mim" / "synthetic.safetensors"
    saved = load_synthetic(path).metadata["evaluations"]["train_from_scratch"]
    alone = evaluate(path, device="cpu")["evaluations"]["train_from_scratch"]
    assert len(alone["accuracies"]) == 2
    assert saved["accuracies"] == alone["accuracies"] == evals[0]["accuracies"]
    # an interrupted two-process run resumes to the images of an uninterrupted one
    resumed = load_synthetic(tmp_path / "multi" / "resumed" / "synthetic.safetensors")
    straight = load_synthetic(path)
    assert torch.equal(resumed.images, straight.images)


@pytest.mark.slow
def test_launch_run_raises_the_childs_toolkit_error(tmp_path):
    names = _unshardable_losses()
    if not names:
        pytest.skip("every installed dd loss supports sharding")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(merged(TINY, {"dd_loss": {"name": names[0]}})))
    with pytest.raises(RecipeError, match=f"dd_loss '{names[0]}' cannot split"):
        launch_run(2, recipe, [], out=tmp_path / "out", progress=False,
                               threads=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_nproc_per_node_matches_one_process(tmp_path):
    from typer.testing import CliRunner

    from mim4dd_kit.cli import app

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(merged(TINY, {"synthetic": {"iterations": 3}})))
    cli = CliRunner()
    two = cli.invoke(app, ["run", str(recipe), "--nproc-per-node", "2", "--json",
                           "--out", str(tmp_path / "two")])
    assert two.exit_code == 0, two.output
    summary = json.loads(two.stdout)  # one JSON document: only rank 0 reported
    one = cli.invoke(app, ["run", str(recipe), "--json", "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    a = load_synthetic(summary["synthetic"]).images
    b = load_synthetic(tmp_path / "one" / "synthetic.safetensors").images
    assert torch.allclose(a, b, atol=ATOL, rtol=0)
    assert math.isclose(summary["final_losses"]["loss"],
                        json.loads(one.stdout)["final_losses"]["loss"], rel_tol=RTOL)


def _fail_on_rank_0() -> None:
    import time

    if os.environ["RANK"] == "0":
        raise RunError("rank 0 stops here")
    time.sleep(60)  # the peer is still busy when rank 0 fails


@pytest.mark.slow
def test_a_failed_process_stops_its_peers_without_torchs_sigterm_warning(caplog):
    caplog.set_level("WARNING")
    with pytest.raises(RunError, match="rank 0 stops here"):
        distributed.launch(2, _fail_on_rank_0, threads=1)
    assert "SIGTERM" not in caplog.text


def _die_after_finishing() -> int:
    """Finishes and records its work, then dies on its way out (as a library's teardown
    sometimes did under load)."""
    from mim4dd_kit.core import distributed as in_child

    in_child.destroy = os.abort  # _child calls it after writing the record
    return 10 * int(os.environ["RANK"])


@pytest.mark.slow
def test_a_process_that_dies_after_finishing_its_work_does_not_fail_the_run():
    assert distributed.launch(2, _die_after_finishing, threads=1) == [0, 10]


def _mark_at_exit(folder: str) -> int:
    import atexit

    atexit.register(lambda: (Path(folder) / os.environ["RANK"]).write_text("teardown ran"))
    return 1


@pytest.mark.slow
def test_a_finished_process_leaves_without_the_interpreters_teardown(tmp_path):
    assert distributed.launch(2, _mark_at_exit, str(tmp_path), threads=1) == [1, 1]
    assert list(tmp_path.iterdir()) == []
