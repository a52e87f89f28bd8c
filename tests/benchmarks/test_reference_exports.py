"""The side-by-side helpers that move experts and sets between the toolkit and the
reference code's formats (benchmarks/export_expert_buffer.py, export_reference_set.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark
from safetensors.torch import save_file

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.io.synthetic import load_synthetic


def _fake_buffer(folder: Path, experts: int, epochs: int) -> tuple[ConvNet, list[torch.Tensor]]:
    net = ConvNet(ConvNet.Params(width=8, depth=2), channels=1, num_classes=3,
                  image_size=(8, 8))
    names = [n for n, _ in net.named_parameters()]
    shapes = [list(p.shape) for _, p in net.named_parameters()]
    total = sum(p.numel() for p in net.parameters())
    folder.mkdir(parents=True)
    rows = []
    g = torch.Generator().manual_seed(0)
    for i in range(experts):
        r = torch.randn(epochs + 1, total, generator=g)
        rows.append(r)
        save_file({"params": r}, str(folder / f"expert_{i:04d}.safetensors"),
                  metadata={"param_names": json.dumps(names),
                            "param_shapes": json.dumps(shapes)})
    (folder / "buffer.json").write_text(json.dumps({"experts": list(range(experts))}))
    return net, rows


def test_expert_export_splits_rows_into_the_networks_parameters(tmp_path):
    mod = load_benchmark("export_expert_buffer")
    net, rows = _fake_buffer(tmp_path / "buf", experts=3, epochs=4)
    traj = mod.reference_trajectories(tmp_path / "buf", experts=2)
    assert len(traj) == 2 and all(len(t) == 5 for t in traj)  # first K; epochs + 1 rows
    shapes = [p.shape for p in net.parameters()]
    for expert, flat in zip(traj, rows, strict=False):
        for epoch, tensors in enumerate(expert):
            assert [t.shape for t in tensors] == shapes  # the network's parameters() order
            assert torch.equal(torch.cat([t.reshape(-1) for t in tensors]), flat[epoch])
    # a row loads into the network by parameters() order, as the reference's
    # ReparamModule / timestamps lists do
    with torch.no_grad():
        for p, t in zip(net.parameters(), traj[1][3], strict=True):
            p.copy_(t)
    flat = torch.cat([p.reshape(-1) for p in net.parameters()])
    assert torch.equal(flat, rows[1][3])


def test_expert_export_refuses_an_empty_folder(tmp_path):
    mod = load_benchmark("export_expert_buffer")
    (tmp_path / "buf").mkdir()
    (tmp_path / "buf" / "buffer.json").write_text("{}")
    with pytest.raises(SystemExit, match="no finished expert"):
        mod.reference_trajectories(tmp_path / "buf", None)


def test_mtt_and_bptt_outputs_become_sets(tmp_path, monkeypatch):
    mod = load_benchmark("export_reference_set")
    x = torch.randn(3, 1, 8, 8)
    y = torch.arange(3)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(x, run / "images_7.pt")
    torch.save(y, run / "labels_7.pt")
    torch.save(torch.tensor(0.0123), run / "syn_lr_7.pt")
    ((xi, yi, lr),) = mod.read_sets(run / "images_7.pt", "mtt")
    assert torch.equal(xi, x) and torch.equal(yi, y) and lr == pytest.approx(0.0123)
    torch.save({"images": x, "labels": y}, tmp_path / "bptt.pt")
    ((xi, yi, lr),) = mod.read_sets(tmp_path / "bptt.pt", "bptt")
    assert torch.equal(xi, x) and torch.equal(yi, y) and lr is None
    with pytest.raises(SystemExit, match="images_<it>.pt"):
        mod.read_sets(tmp_path / "bptt.pt", "mtt")
    # through export(): the learned lr is stored and the provenance names the repository
    out = tmp_path / "sets"
    out.mkdir()
    monkeypatch.setattr(mod, "dataset_identity", lambda name, root: {"name": name})
    (path,) = mod.export(run / "images_7.pt", out, commit="abc", script="distill.py",
                         command="python distill.py", patches=[], dataset="fashion_mnist",
                         data_root=None, prefix="ref", fmt="mtt")
    s = load_synthetic(path)
    assert s.lr == pytest.approx(0.0123)
    assert s.metadata["source"]["repository"].endswith("mtt-distillation")


def test_reference_rates_read_dc_and_cafe_logs(tmp_path):
    """Seconds per image update from a DC-style log (clock stamps every 10th outer
    iteration) and from a CAFE log (logging's stamps, the image updates each network
    served)."""
    table = load_benchmark("reference_compare_table")
    dc = tmp_path / "dc.log"
    dc.write_text("[2026-11-30 10:00:00] training begins\n"
                  "[2026-11-30 10:00:10] iter = 0000, loss = 1.0\n"
                  "[2026-11-30 10:01:50] iter = 0010, loss = 0.5\n")
    assert table.reference_rates(dc, 1) == pytest.approx([110 / 11])
    assert table.reference_rates(dc, 10) == pytest.approx([110 / 110])
    cafe = tmp_path / "cafe.log"
    cafe.write_text("2026-11-30 16:41:00: initialize synthetic data from random noise\n"
                    "2026-11-30 16:41:15: [2026-11-30 16:41:15] training begins\n"
                    "2026-11-30 16:44:15: side-by-side: iteration 0: 16 image updates\n"
                    "2026-11-30 16:45:00: iter = 0000, loss = 3.0\n"
                    "2026-11-30 16:47:15: side-by-side: iteration 1: 14 image updates\n")
    assert table.reference_rates(cafe, 1) == pytest.approx([360 / 30])
