"""Cross-architecture generalisation: the evaluation protocol on several backbones.

Source: the cross-architecture evaluations of the DC/DSA/DM/MTT papers (the default list
is DC's table): a set distilled with one network (usually ConvNet) trains
other architectures, each by the ``train_from_scratch`` protocol, tested on real data.
Backbones that are not installed, or that cannot take the data set's image size, are
listed in ``skipped`` with the reason instead of failing the evaluation. See
docs/components/cross_arch.md.
"""

from __future__ import annotations

from typing import Any

from ..api import BackboneRef, EvalRequest, EvalResult, Evaluator
from ..core import distributed
from ..core.errors import PluginError
from ..core.runtime import isolated_rng
from .params import CrossArchParams
from .train_from_scratch import TrainFromScratch


def _label(ref: BackboneRef) -> str:
    """``name`` or ``name (key=value, ...)`` for the table."""
    if not ref.params:
        return ref.name
    return f"{ref.name} ({', '.join(f'{k}={v}' for k, v in ref.params.items())})"


def markdown_table(rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> str:
    """A Markdown table of the rows, with the skipped backbones listed under it."""
    lines = ["| backbone | accuracy (%) | networks | seconds |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
            f"{len(r['accuracies'])} | {r['seconds']:.1f} |"
        )
    if skipped:
        lines.append("")
        lines += [f"- skipped {s['backbone']}: {s['reason']}" for s in skipped]
    return "\n".join(lines)


class CrossArch(Evaluator):
    """Train-from-scratch accuracy of the set on several backbones (cross-architecture)."""

    Params = CrossArchParams

    def __init__(self, params: CrossArch.Params):
        self.params = params

    def planned_epochs(self, request: EvalRequest) -> int:
        """Network-epochs this process trains, every listed backbone counted
        (mim4dd_kit/run/progress.py)."""
        p = self.params
        return len(p.backbones) * len(distributed.local_indices(p.models)) * p.epochs

    def evaluate(self, request: EvalRequest, registry, progress=None) -> EvalResult:
        p = self.params
        info = request.data.info
        installed = set(registry.names("backbones"))
        protocol = {k: getattr(p, k) for k in type(p).model_fields if k != "backbones"}
        rows: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        for ref in p.backbones:
            label = _label(ref)
            if ref.name.split(":")[-1] not in installed:
                skipped.append({"backbone": label, "reason": "not installed"})
                continue
            try:
                # a throw-away build to find out whether it fits the images, on its own
                # stream so the training draws are unaffected
                with isolated_rng(request.seed, request.device):
                    registry.build("backbones", ref, channels=info.channels,
                                   num_classes=info.num_classes, image_size=info.image_size)
            except PluginError as exc:
                skipped.append({"backbone": label, "reason": str(exc)})
                continue
            tfs = TrainFromScratch(TrainFromScratch.Params(**protocol, backbone=ref))
            res = tfs.evaluate(request, registry, progress)
            rows.append({
                "backbone": ref.name,
                "params": ref.params,
                "label": label,
                "accuracy_mean": res["accuracy_mean"],
                "accuracy_std": res["accuracy_std"],
                "accuracies": res["accuracies"],
                "seconds": res["seconds"],
            })
        markdown = markdown_table(rows, skipped)
        return EvalResult({
            "table": rows,
            "skipped": skipped,
            "markdown": markdown,
            "models": p.models,
            "epochs": p.epochs,
            "augmentation": p.augmentation.name if p.augmentation else None,
        }, tables={"cross-architecture accuracy": markdown})
