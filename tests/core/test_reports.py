"""Pictures, export, compare and run reports."""

import json
import re

import pytest
import torch
from helpers import MIM, TINY, distilled, merged
from typer.testing import CliRunner

from mim4dd_kit.analysis.compare import compare, format_compare, headlines, method_of
from mim4dd_kit.analysis.report import build_report, export_grid
from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.core import plots
from mim4dd_kit.core.errors import MissingExtraError, ReportError
from mim4dd_kit.core.plots import grid_array, read_history
from mim4dd_kit.io.synthetic import load_synthetic, save_synthetic, update_metadata
from mim4dd_kit.run.baseline import make_baseline

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def _no_matplotlib(monkeypatch):
    def missing():
        raise MissingExtraError(f"drawing pictures needs matplotlib; {plots.PLOT_EXTRA_HINT}")

    monkeypatch.setattr(plots, "_figure_class", missing)


# -- grid_array -------------------------------------------------------------------------


def test_grid_array_shape_and_range():
    images = torch.randn(6, 3, 4, 5) * 5
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    grid = grid_array(images, labels, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    # 3 class rows, 3 columns (largest class), 1 pixel of padding between cells
    assert grid.shape == (3 * 5 - 1, 3 * 6 - 1, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    # the padding lines between cells and the empty cells of classes 0 and 2 are white
    assert (grid[[4, 9]] == 1).all() and (grid[:, [5, 11]] == 1).all()
    assert (grid[0:4, 12:17] == 1).all() and (grid[10:14, 6:17] == 1).all()
    wrapped = grid_array(images, labels, 0.0, 1.0, ncols=2, pad=0)
    assert wrapped.shape == ((1 + 2 + 1) * 4, 2 * 5, 3)  # class 1 wraps onto two rows
    # class 1's third image (images[4]) opens the second row of its block
    cell = torch.from_numpy(wrapped[8:12, 0:5]).permute(2, 0, 1)
    torch.testing.assert_close(cell, images[4].clamp(0, 1).to(cell.dtype))


def test_grid_array_round_trips_normalised_images():
    g = torch.Generator().manual_seed(0)
    originals = torch.rand(7, 3, 4, 4, generator=g)
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    normed = (originals - mean[:, None, None]) / std[:, None, None]
    grid = torch.from_numpy(grid_array(normed, labels, mean.tolist(), std.tolist(), pad=0))
    cells = grid.reshape(3, 4, 3, 4, 3).permute(0, 2, 4, 1, 3)  # (row, col, C, H, W)
    for cls in range(3):
        members = torch.nonzero(labels == cls).flatten()
        for col, i in enumerate(members.tolist()):
            assert torch.allclose(cells[cls, col], originals[i], atol=1e-6)
    # class 1 has one image: the rest of its row is white padding
    assert torch.equal(cells[1, 1:], torch.ones_like(cells[1, 1:]))
    grey = grid_array(normed[:, :1], labels, [0.49], [0.25], pad=0)
    assert grey.shape[2] == 1
    grey_cells = torch.from_numpy(grey).reshape(3, 4, 3, 4).permute(0, 2, 1, 3)  # (row, col, H, W)
    assert torch.allclose(grey_cells[0, 1], originals[4, 0], atol=1e-6)  # class 0's 2nd image


def test_grid_array_clips_and_rescales():
    images = torch.tensor([[[[-10.0, 0.0], [10.0, 0.5]]]])
    grid = grid_array(images, torch.tensor([0]), 0.0, 1.0, pad=0)[:, :, 0]
    assert grid.tolist() == [[0.0, 0.0], [1.0, 0.5]]
    stretched = grid_array(images, torch.tensor([0]), 0.0, 1.0, pad=0, rescale=True)[:, :, 0]
    assert stretched.ravel().tolist() == pytest.approx([0.0, 0.5, 1.0, 0.525])
    with pytest.raises(ReportError, match="2 value"):
        grid_array(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [0.1, 0.2], [1.0])


# -- read_history and drawings --------------------------------------------------------


def test_read_history_names_the_bad_line(tmp_path):
    log = tmp_path / "losses.jsonl"
    log.write_text('{"iteration": 1, "loss": 1.0}\n\n{"iteration": 2, loss}\n')
    with pytest.raises(ReportError, match=r"losses.jsonl:3: malformed line"):
        read_history(log)
    log.write_text('{"iteration": 1, "loss": 1.0}\n[1, 2]\n')
    with pytest.raises(ReportError, match=r"losses.jsonl:2: expected a JSON object"):
        read_history(log)
    log.write_text('{"iteration": 1, "loss": 1.0}\n\n{"iteration": 2, "loss": 0.5}\n')
    assert [h["loss"] for h in read_history(log)] == [1.0, 0.5]


def test_drawings_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    history = [{"iteration": i, "loss_dd": 1.0 / i, "loss_reg": 0.01 * i, "loss": 1.0,
                "nce1": 0.5, "nce2": 0.4} for i in range(1, 6)]
    paths = [
        plots.save_loss_curves(history, tmp_path / "loss.png", title="run"),
        plots.save_heatmap([[1.0, 0.2], [0.3, 0.9], [0.1, 0.5]], tmp_path / "cka.png",
                           xlabels=["a", "b"], ylabels=["x", "y", "z"], vmin=0, vmax=1),
        plots.save_image_grid(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 1, 0]),
                              tmp_path / "grid.png", mean=[0.5], std=[0.2],
                              class_names=["zero", "one"]),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cka.png", "grid.png", "loss.png"]
    with pytest.raises(ReportError, match="2 row labels"):
        plots.save_heatmap([[1.0, 0.2], [0.3, 0.9]], tmp_path / "bad.png", xlabels=["a", "b"],
                           ylabels=["x"])


def test_loss_curves_draw_the_gradient_ratio_on_a_log_scale(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    drawn = []
    save = plots._save_png
    monkeypatch.setattr(plots, "_save_png", lambda fig, path, dpi=100: (drawn.append(fig),
                                                                       save(fig, path, dpi))[1])
    # diagnostics are logged every other iteration: the ratio is a sparse series
    history = [{"iteration": i, "loss_dd": 1.0 / i, "loss_reg": 0.1,
                **({"grad_ratio": 10.0 ** (2 - i)} if i % 2 else {})} for i in range(1, 7)]
    plots.save_loss_curves(history, tmp_path / "loss.png")
    axes = drawn[0].axes
    assert [a.get_ylabel() for a in axes] == ["$L_{DD}$", "regularizer",
                                              "|grad reg| / |grad DD|"]
    ratio = axes[2]
    assert ratio.get_yscale() == "log"
    assert list(ratio.lines[0].get_xdata()) == [1.0, 3.0, 5.0]
    assert list(ratio.lines[0].get_ydata()) == [10.0, 0.1, 0.001]


def test_drawing_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    _no_matplotlib(monkeypatch)
    with pytest.raises(MissingExtraError, match=r"pip install 'mim4dd_kit\[plot\]'"):
        plots.save_heatmap([[1.0]], tmp_path / "x.png", xlabels=["a"], ylabels=["b"])
    set_path = save_synthetic(tmp_path / "s.safetensors", torch.zeros(2, 1, 2, 2),
                              torch.tensor([0, 1]), metadata={"dataset": {"mean": [0.0],
                                                                          "std": [1.0]}})
    res = runner.invoke(app, ["export", str(set_path), str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "mim4dd_kit[plot]" in res.stderr


# -- export -----------------------------------------------------------------------------


def test_export_uses_recorded_or_given_normalisation(tmp_path):
    pytest.importorskip("matplotlib")
    foreign = save_synthetic(tmp_path / "foreign.safetensors", torch.randn(4, 3, 5, 5),
                             torch.tensor([0, 0, 1, 1]))
    res = runner.invoke(app, ["export", str(foreign), str(tmp_path / "f.png")])
    assert res.exit_code == 2 and "--mean" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["export", str(foreign), str(tmp_path / "f.png"),
                              "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    res = runner.invoke(app, ["export", str(foreign), str(tmp_path / "f.png"),
                              "--mean", "0.5,abc", "--std", "1"])
    assert res.exit_code == 2 and "comma-separated" in res.stderr
    base = make_baseline("digits", "random", 2, 0, tmp_path / "rand.safetensors",
                         device="cpu")
    res = runner.invoke(app, ["export", str(base), str(tmp_path / "r.png"), "--ncols", "1"])
    assert res.exit_code == 0, res.output
    assert export_grid(base, tmp_path / "r2.png").read_bytes()[:8] == PNG


# -- compare ----------------------------------------------------------------------------


def _fabricated(tmp_path, name, recipe, evaluations, ipc=2):
    labels = torch.arange(10).repeat_interleave(ipc)
    meta = {"recipe": recipe, "dataset": {"name": "digits", "num_classes": 10},
            "iterations": 100, "evaluations": evaluations}
    return save_synthetic(tmp_path / name, torch.randn(len(labels), 1, 8, 8), labels,
                          metadata=meta)


def test_compare_rows_and_table(tmp_path):
    mim = {"name": "a", "dataset": {"name": "digits"}, "dd_loss": {"name": "dm"},
           "regularizer": {"name": "mim4dd", "lambda": 0.8}}
    a = _fabricated(tmp_path, "a.safetensors", mim, {
        "train_from_scratch": {"accuracy_mean": 50.0, "accuracy_std": 1.0},
        "cross_arch": {"table": [{"backbone": "mlp", "accuracy_mean": 40.0,
                                  "accuracy_std": 2.5}], "skipped": []},
        "cka": {"matrix": [[0.9, 0.1], [0.2, 0.8]], "layers": ["1", "2"],
                "diagonal": [0.9, 0.8]},
    })
    b = _fabricated(tmp_path, "b.safetensors",
                    {"name": "b", "dataset": {"name": "digits"}, "dd_loss": {"name": "dm"}},
                    {"train_from_scratch": {"accuracy_mean": 45.5, "accuracy_std": 2.0,
                                            "models": 2, "epochs": 3}})
    c = make_baseline("digits", "herding", 2, 0, tmp_path / "c.safetensors",
                      features={"space": "pixels"}, device="cpu")
    rows = compare([a, b, c])
    assert [r["method"] for r in rows] == ["dm + mim4dd (λ=0.8)", "dm",
                                          "coreset: herding (pixels features)"]
    assert [r["ipc"] for r in rows] == [2, 2, 2] and rows[2]["iterations"] is None
    assert rows[0]["columns"]["train_from_scratch acc %"] == {"mean": 50.0, "std": 1.0}
    assert rows[0]["columns"]["cross_arch/mlp acc %"] == {"mean": 40.0, "std": 2.5}
    assert rows[0]["columns"]["cka diag mean"]["value"] == pytest.approx(0.85)
    md = format_compare(rows)
    lines = md.strip().splitlines()
    assert len(lines) == 5 and "train_from_scratch acc %" in lines[0]
    assert "| 50.00 ± 1.00 | – | 40.00 ± 2.50 |" in lines[2]
    assert "45.50 ± 2.00" in lines[3] and lines[4].count("–") == 5  # baseline: no numbers
    # the budget behind each score stands beside it
    assert "| train_from_scratch acc % | train_from_scratch protocol |" in lines[0]
    assert "| 45.50 ± 2.00 | 2 nets × 3 ep |" in lines[3]
    assert rows[1]["budget"] == {"train_from_scratch": "2 nets × 3 ep"}
    res = runner.invoke(app, ["compare", str(a), str(b), str(c), "--json"])
    assert res.exit_code == 0, res.output
    assert [r["file"] for r in json.loads(res.stdout)] == [str(a), str(b), str(c)]
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_compare_evaluates_missing_and_saves(tmp_path):
    c = make_baseline("digits", "random", 1, 0, tmp_path / "c.safetensors", device="cpu")
    res = runner.invoke(app, ["compare", str(c), "--evaluate", "--models", "1", "--epochs",
                              "1", "--device", "cpu", "--save", "--out",
                              str(tmp_path / "table.md")])
    assert res.exit_code == 0, res.output
    assert re.search(r"\| \d+\.\d\d ± 0\.00 \|", res.stdout)
    assert (tmp_path / "table.md").read_text() == res.stdout
    stored = load_synthetic(c).metadata["evaluations"]["train_from_scratch"]
    assert stored["models"] == 1 and stored["epochs"] == 1


def test_headlines_and_method_of_unknown_shapes():
    assert headlines("x", {"note": "text"}) == {}
    assert headlines("mi", {"mi_lower_bound": [1.0, 2.0]}) == {
        "mi bound (layer mean)": {"value": 1.5}}
    assert method_of({}) == "?"
    # a result that names its headline numbers gets one column each, nothing guessed
    declared = {"headline": ["mean_diagonal", "missing", "note"], "mean_diagonal": 0.5,
                "note": "text", "diagonal": [0.1]}
    assert headlines("cka", declared) == {"cka mean_diagonal": {"value": 0.5}}


# -- report ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    recipe = validate_recipe(merged(TINY, {"regularizer": MIM}))
    distilled(recipe, out)
    update_metadata(out / "synthetic.safetensors", evaluations={
        "train_from_scratch": {"accuracy_mean": 61.25, "accuracy_std": 1.5,
                               "accuracies": [60.0, 62.5], "models": 2, "epochs": 3,
                               "protocol": "dsa"},
        "cka": {"matrix": [[0.91, 0.12], [0.33, 0.84]], "layers": ["block1", "block2"],
                "diagonal": [0.91, 0.84]},
        "<script>alert(1)</script>": {"accuracy_mean": 1.0, "accuracy_std": 0.0},
    })
    return out


def test_html_report_is_one_self_contained_file(run_dir):
    pytest.importorskip("matplotlib")
    before = set(run_dir.iterdir())
    res = runner.invoke(app, ["report", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    page = run_dir / "report.html"
    assert json.loads(res.stdout)["files"] == [str(page)]
    assert set(run_dir.iterdir()) - before == {page}
    text = page.read_text()
    assert "<h1>tiny</h1>" in text
    assert "loss_dd" in text and "loss_reg" in text and "nce1" in text
    assert text.count('<img src="data:image/png;base64,') == 3  # losses, images, CKA
    assert "0.840" in text and "block2" in text and "61.25 ± 1.50" in text
    assert "protocol dsa × 2 nets × 3 ep" in text  # how the number was obtained
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert not re.search(r"(src|href)=\"(?!data:)", text)  # nothing external
    assert "dd_loss:" in text and "mim4dd" in text  # the recipe YAML


def test_markdown_report_writes_pngs_beside_it(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    result = build_report(run_dir, tmp_path / "out" / "r.md", markdown=True)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["r.md", "r_cka_heatmap.png", "r_images.png", "r_losses.png"]
    text = result.path.read_text()
    assert "![loss curves](r_losses.png)" in text and "| block1 | 0.910 | 0.120 |" in text
    assert result.warnings == []


def test_report_without_matplotlib_says_so(run_dir, tmp_path, monkeypatch):
    _no_matplotlib(monkeypatch)
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.html").read_text()
    assert "<img" not in text and "matplotlib is not installed" in text
    assert "mim4dd_kit[plot]" in res.stderr
    assert "loss_dd" in text  # the numbers are still there


def test_report_errors(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "neither a run folder" in res.stderr
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "holds no synthetic set" in res.stderr
