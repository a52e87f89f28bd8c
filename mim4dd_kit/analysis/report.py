"""Run reports (``mdk report``) and image export (``mdk export``).

:func:`build_report` turns a run folder (``synthetic.safetensors``, ``losses.jsonl``,
``recipe.yaml`` as :mod:`mim4dd_kit.run.engine` writes them) or a single synthetic-set file
(e.g. a coreset baseline) into one page: the recipe, the provenance (components with
versions, data set identity, seed, device, times), the loss curves (paper Fig. 4 style),
the image grid, every stored evaluation (a CKA matrix as a table and a heat map, paper
Fig. 5 style) and warnings. HTML output is one self-contained file: pictures are embedded
as base64 ``data:`` URIs and nothing external is referenced. Markdown output writes
``report.md`` with the PNG files beside it. All text taken from files is escaped.

Pictures need matplotlib (the ``plot`` extra); without it the page is produced without
pictures and says so.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config.recipe import parse_yaml
from ..core.errors import MdkError, MissingExtraError, RecipeError, ReportError
from ..core.files import atomic_write
from ..core.plots import (
    PLOT_EXTRA_HINT,
    have_matplotlib,
    read_history,
    save_heatmap,
    save_image_grid,
    save_loss_curves,
)
from ..io.synthetic import SyntheticSet, load_synthetic
from .compare import best_of_entries, best_of_text, budget_of, headlines

HISTORY = "losses.jsonl"
RECIPE = "recipe.yaml"
DEFAULT_SET = "synthetic.safetensors"

# -- export ----------------------------------------------------------------------------


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.49,0.48,0.45"`` -> [0.49, 0.48, 0.45]; None stays None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ReportError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ReportError(f"--{what} is empty")
    return values


def grid_settings(s: SyntheticSet, path: Path, mean: list[float] | None = None,
                  std: list[float] | None = None) -> tuple[Any, Any, bool, list[str]]:
    """mean, std, rescale flag and notes for drawing ``s`` (explicit values win)."""
    ds = s.metadata.get("dataset") or {}
    notes: list[str] = []
    if (mean is None) != (std is None):
        raise ReportError("give both --mean and --std, or neither")
    if mean is not None:
        return mean, std, False, notes
    if "mean" not in ds or "std" not in ds:
        raise ReportError(
            f"{path} records no data set mean/std (it was not written by mdk), so its "
            "images cannot be de-normalised; pass them, e.g. --mean 0.2860 --std 0.3530 "
            "(one value per channel, comma-separated)"
        )
    if ds.get("zca"):
        notes.append("the set is ZCA-whitened: each image is stretched to its own range")
        return ds["mean"], ds["std"], True, notes
    return ds["mean"], ds["std"], False, notes


def export_grid(
    file: str | Path,
    out: str | Path,
    *,
    ncols: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> Path:
    """Draw a synthetic set as a PNG grid (one row per class) and return ``out``.

    De-normalises with the ``dataset.mean``/``dataset.std`` the file records, or with
    ``mean``/``std`` for files without provenance.
    """
    file = Path(file)
    s = load_synthetic(file)
    m, sd, rescale, _ = grid_settings(s, file, mean, std)
    names = (s.metadata.get("dataset") or {}).get("class_names")
    return save_image_grid(s.images, s.labels, out, mean=m, std=sd, class_names=names,
                           ncols=ncols, rescale=rescale)


# -- the page model --------------------------------------------------------------------


@dataclass
class Block:
    """One piece of a section: ``p``, ``table``, ``pre``, ``img``, ``list``, ``details``."""

    kind: str
    text: str = ""
    head: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    image: Path | None = None


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and the warnings it has for the user."""

    path: Path
    files: list[Path]
    warnings: list[str]


def _s(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _locate(target: Path) -> tuple[Path, Path]:
    if target.is_file():
        return target.parent, target
    if not target.is_dir():
        raise ReportError(f"{target} is neither a run folder nor a synthetic-set file")
    names = []
    recipe_file = target / RECIPE
    if recipe_file.is_file():
        try:
            recorded = parse_yaml(recipe_file.read_text(encoding="utf-8"), str(recipe_file))
            output = recorded.get("output") if isinstance(recorded, dict) else None
            name = output.get("file") if isinstance(output, dict) else None
            if isinstance(name, str) and "/" not in name and "\\" not in name:
                names.append(name)
        except (RecipeError, OSError, UnicodeDecodeError):
            pass
    names.append(DEFAULT_SET)
    for name in names:
        if (target / name).is_file():
            return target, target / name
    found = sorted(target.glob("*.safetensors"))
    if len(found) == 1:
        return target, found[0]
    raise ReportError(
        f"{target} holds no synthetic set ({DEFAULT_SET} or one *.safetensors file); "
        "a run writes it when it finishes" if not found else
        f"{target} holds several synthetic sets ({', '.join(p.name for p in found)}); "
        "name one of them instead of the folder"
    )


def _provenance_blocks(meta: dict[str, Any], s: SyntheticSet, path: Path) -> list[Block]:
    keys = ("toolkit_version", "seed", "device", "torch_version", "python_version",
            "started", "finished", "run_seconds", "iterations", "recipe_fingerprint",
            "tensors_sha256", "format")
    rows = [["file", str(path)], ["images", " x ".join(map(str, s.images.shape))],
            ["images per class", str(s.ipc())]]
    if s.formation > 1:
        f2 = s.formation ** 2
        rows += [["formation factor", str(s.formation)],
                 ["decoded images", f"{len(s.labels) * f2} ({s.ipc() * f2} per class)"]]
    if s.lr is not None:
        rows.append(["learned lr", _s(s.lr)])
    rows += [[k, _s(meta[k])] for k in keys if k in meta]
    for k, v in (meta.get("final_losses") or {}).items():
        rows.append([f"final {k}", _s(v)])
    blocks = [Block("table", head=["key", "value"], rows=rows)]
    comps = meta.get("components") or []
    if comps:
        blocks.append(Block("p", "Components:"))
        blocks.append(Block("table", head=["role", "name", "package", "version", "target"],
                            rows=[[_s(c.get(k, "")) for k in
                                   ("key", "name", "package", "version", "target")]
                                  for c in comps if isinstance(c, dict)]))
    ds = meta.get("dataset") or {}
    if ds:
        blocks.append(Block("p", "Data set identity:"))
        blocks.append(Block("table", head=["key", "value"],
                            rows=[[k, _s(v)] for k, v in ds.items()]))
    coreset = meta.get("coreset")
    if isinstance(coreset, dict):
        idx = coreset.get("indices") or []
        rows = [[k, _s(v)] for k, v in coreset.items() if k != "indices"]
        rows.append(["indices", f"{len(idx)} training-set indices, first: "
                     + ", ".join(map(str, idx[:10]))])
        blocks.append(Block("p", "Coreset selection:"))
        blocks.append(Block("table", head=["key", "value"], rows=rows))
    return blocks


def _loss_rows(history: list[dict[str, Any]]) -> list[list[str]]:
    keys = list(dict.fromkeys(k for h in history for k in h if k != "iteration"))
    rows = []
    for k in keys:
        vals = [float(h[k]) for h in history
                if isinstance(h.get(k), (int, float)) and not isinstance(h.get(k), bool)]
        finite = [v for v in vals if math.isfinite(v)]
        if not finite:
            continue
        rows.append([k, _s(finite[0]), _s(min(finite)), _s(max(finite)), _s(finite[-1])])
    return rows


def _labels(result: dict[str, Any], n: int, key: str) -> list[str]:
    for k in (key, "layers"):
        v = result.get(k)
        if isinstance(v, list) and len(v) == n:
            return [str(x) for x in v]
    return [str(i + 1) for i in range(n)]


def _matrix(value: Any) -> list[list[float]] | None:
    if not (isinstance(value, list) and value and all(isinstance(r, list) for r in value)):
        return None
    width = len(value[0])
    ok = all(len(r) == width and all(isinstance(x, (int, float)) for x in r) for r in value)
    return value if ok and width else None


def _evaluation_blocks(name: str, result: Any, pictures: _Pictures) -> list[Block]:
    if not isinstance(result, dict):
        return [Block("pre", json.dumps(result, indent=2, default=str))]
    blocks: list[Block] = []
    named = [(col, cell["value"]) for col, cell in headlines(name, result).items()
             if "value" in cell]
    if named:  # the numbers the evaluator names as its headline (compare.headlines)
        blocks.append(Block("p", "Headline: " + "; ".join(
            f"{col[len(name) + 1:] if col.startswith(name + ' ') else col} = {value:.4g}"
            for col, value in named) + "."))
    if isinstance(result.get("accuracy_mean"), (int, float)):
        accs = result.get("accuracies") or []
        budget = budget_of(result)
        text = (f"Test accuracy {result['accuracy_mean']:.2f} ± "
                f"{float(result.get('accuracy_std') or 0):.2f} % (mean ± std over "
                f"{len(accs) or result.get('models', '?')} networks"
                + (f"; {budget}" if budget else "") + ")")
        if accs:
            text += "; per network: " + ", ".join(f"{float(a):.2f}" for a in accs)
        blocks.append(Block("p", text + "."))
    table = result.get("table")
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        rows = []
        for r in table:
            mean, std = r.get("accuracy_mean"), r.get("accuracy_std")
            acc = (f"{float(mean):.2f} ± {float(std or 0):.2f}"
                   if isinstance(mean, (int, float)) else "–")
            rows.append([_s(r.get("backbone", "?")), acc,
                         ", ".join(f"{float(a):.2f}" for a in r.get("accuracies") or [])])
        blocks.append(Block("table", head=["backbone", "accuracy (%)", "per network"],
                            rows=rows))
    skipped = result.get("skipped")
    if isinstance(skipped, list) and skipped:
        blocks.append(Block("p", "Skipped: " + "; ".join(
            f"{x['backbone']} ({x.get('reason', '')})" if isinstance(x, dict)
            and "backbone" in x else _s(x) for x in skipped)))
    matrix = _matrix(result.get("matrix"))
    if matrix is not None:
        ylabels = _labels(result, len(matrix), "row_layers")
        xlabels = _labels(result, len(matrix[0]), "col_layers")
        blocks.append(Block("p", "Rows: layers of the network trained on real data; "
                                 "columns: layers of the network trained on the set."))
        blocks.append(Block("table", head=["", *xlabels],
                            rows=[[y, *(f"{float(v):.3f}" for v in row)]
                                  for y, row in zip(ylabels, matrix, strict=True)]))
        pic = pictures.draw(f"{name}_heatmap", lambda p: save_heatmap(
            matrix, p, xlabels=xlabels, ylabels=ylabels, title=name, vmin=0.0, vmax=1.0,
            xname="network trained on the set", yname="network trained on real data"))
        if pic is not None:
            blocks.append(Block("img", text=f"{name} heat map", image=pic))
    bound = result.get("mi_lower_bound")
    if isinstance(bound, list) and bound:
        nce = result.get("nce") if isinstance(result.get("nce"), list) else []
        layers = _labels(result, len(bound), "layers")
        blocks.append(Block("table", head=["layer", "MI lower bound (nats)", "NCE"],
                            rows=[[layer, _s(b), _s(nce[i]) if i < len(nce) else "–"]
                                  for i, (layer, b) in enumerate(zip(layers, bound,
                                                                     strict=True))]))
    settings = [[k, _s(v)] for k, v in result.items()
                if k not in ("accuracy_mean", "accuracy_std", "accuracies", "table",
                             "matrix", "markdown", "skipped", "mi_lower_bound", "nce")
                and not isinstance(v, list)]
    if settings:
        blocks.append(Block("table", head=["setting", "value"], rows=settings))
    blocks.append(Block("details", text=json.dumps(result, indent=2, default=str)))
    return blocks


def _best_of_blocks(name: str, entry: dict[str, Any], checkpoints: Any) -> list[Block]:
    """The ``best_of`` entry (output.evaluate_every) under its label, after the final
    accuracy, with the score of every evaluation checkpoint."""
    std = entry.get("accuracy_std")
    blocks = [Block("p", f"Best of: {float(entry['accuracy_mean']):.2f} ± "
                         f"{float(std or 0):.2f} %, {best_of_text(entry)}. This selects on "
                         "test accuracy; the set's accuracy is the final one above.")]
    rows = []
    for row in checkpoints if isinstance(checkpoints, list) else []:
        result = ((row.get("evaluations") or {}).get(name) if isinstance(row, dict)
                  else None)
        if isinstance(result, dict) and isinstance(result.get("accuracy_mean"), (int, float)):
            rows.append([_s(row.get("iteration")), f"{float(result['accuracy_mean']):.2f} ± "
                         f"{float(result.get('accuracy_std') or 0):.2f}"])
    if rows:
        blocks.append(Block("table", head=["iteration", "accuracy (%)"], rows=rows))
    return blocks


class _Pictures:
    """Draws pictures into a folder; remembers what failed so the page can say so."""

    def __init__(self, folder: Path, stem: str):
        self.folder, self.stem = folder, stem
        self.enabled = have_matplotlib()
        self.written: list[Path] = []
        self.failures: list[str] = []

    def draw(self, name: str, fn) -> Path | None:
        if not self.enabled:
            return None
        path = self.folder / f"{self.stem}_{_slug(name)}.png"
        try:
            fn(path)
        except MissingExtraError:
            self.enabled = False
            return None
        except MdkError as exc:
            self.failures.append(f"{name}: {exc}")
            return None
        self.written.append(path)
        return path


def _sections(target: Path, pictures: _Pictures, ncols: int | None
              ) -> tuple[str, list[Section], list[str]]:
    run_dir, set_path = _locate(target)
    s = load_synthetic(set_path)
    meta = s.metadata
    warnings: list[str] = []
    recipe_path = run_dir / RECIPE if target.is_dir() else None
    recorded = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else None
    title = str((recorded or {}).get("name") or run_dir.name)
    sections: list[Section] = []

    recipe_text = None
    if recipe_path is not None and recipe_path.is_file():
        recipe_text = recipe_path.read_text(encoding="utf-8")
        try:
            on_disk = parse_yaml(recipe_text, str(recipe_path))
        except RecipeError:
            on_disk = None
        if recorded is not None and on_disk != recorded:
            warnings.append(f"{recipe_path} differs from the recipe recorded in {set_path}; "
                            "the recorded one is what made the set")
    elif recorded is not None:
        recipe_text = yaml.safe_dump(recorded, sort_keys=False, allow_unicode=True)
    sections.append(Section("Recipe", [Block("pre", recipe_text)] if recipe_text else
                            [Block("p", "No recipe is recorded for this set.")]))
    if not s.made_by_mdk:
        warnings.append(f"{set_path} was not written by mdk: its provenance is incomplete")
    sections.append(Section("Provenance", _provenance_blocks(meta, s, set_path)))

    history_path = run_dir / HISTORY if target.is_dir() else None
    loss_blocks: list[Block] = []
    if history_path is not None and history_path.is_file():
        history = read_history(history_path)
        if history:
            pic = pictures.draw("losses", lambda p: save_loss_curves(history, p, title=title))
            if pic is not None:
                loss_blocks.append(Block("img", text="loss curves", image=pic))
            loss_blocks.append(Block("p", f"{len(history)} iterations logged in {HISTORY}."))
            loss_blocks.append(Block("table", head=["loss", "first", "min", "max", "last"],
                                     rows=_loss_rows(history)))
        else:
            warnings.append(f"{history_path} is empty")
    elif "coreset" in meta:
        loss_blocks.append(Block("p", "A coreset baseline: selected, not optimised, so it "
                                      "has no losses."))
    else:
        loss_blocks.append(Block("p", f"No {HISTORY} beside the set."))
        if target.is_dir():
            warnings.append(f"{run_dir} has no {HISTORY}: no loss curves")
    sections.append(Section("Losses", loss_blocks))

    image_blocks: list[Block] = []
    try:
        mean, std, rescale, notes = grid_settings(s, set_path)
    except ReportError as exc:
        image_blocks.append(Block("p", f"No image grid: {exc}"))
    else:
        names = (meta.get("dataset") or {}).get("class_names")
        pic = pictures.draw("images", lambda p: save_image_grid(
            s.images, s.labels, p, mean=mean, std=std, class_names=names, ncols=ncols,
            rescale=rescale))
        if pic is not None:
            image_blocks.append(Block("img", text="synthetic images, one row per class",
                                      image=pic))
        image_blocks += [Block("p", n) for n in notes]
    sections.append(Section("Images", image_blocks or [Block("p", "No pictures.")]))

    evaluations = meta.get("evaluations") or {}
    eval_section = Section("Evaluations")
    if not evaluations:
        eval_section.blocks.append(Block("p", "No evaluation is stored in the set "
                                              "(mdk evaluate FILE --save adds one)."))
        warnings.append("the set has no stored evaluation")
    best = best_of_entries(meta)
    for name, result in evaluations.items():
        eval_section.blocks.append(Block("h3", name))
        eval_section.blocks += _evaluation_blocks(name, result, pictures)
        if name in best:
            eval_section.blocks += _best_of_blocks(name, best[name],
                                                   meta.get("evaluation_checkpoints"))
        if isinstance(result, dict) and isinstance(result.get("warnings"), list):
            warnings += [f"{name}: {_s(w)}" for w in result["warnings"]]
    sections.append(eval_section)
    for w in meta.get("warnings") or []:
        warnings.append(_s(w))
    return title, sections, warnings


# -- rendering -------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}
pre{background:#f6f8fa;padding:.8rem;overflow:auto}img{max-width:100%}
.warn{background:#fff4e5;border:1px solid #f0b96b;padding:.6rem 1rem}
"""


def _html_block(b: Block, embed: bool) -> str:
    e = html.escape
    if b.kind == "p":
        return f"<p>{e(b.text)}</p>"
    if b.kind == "h3":
        return f"<h3>{e(b.text)}</h3>"
    if b.kind == "pre":
        return f"<pre>{e(b.text)}</pre>"
    if b.kind == "details":
        return f"<details><summary>raw result</summary><pre>{e(b.text)}</pre></details>"
    if b.kind == "list":
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in b.head)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                       for row in b.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if b.kind == "img" and b.image is not None:
        if embed:
            data = base64.b64encode(b.image.read_bytes()).decode("ascii")
            src = f"data:image/png;base64,{data}"
        else:
            src = e(b.image.name)
        return f'<p><img src="{src}" alt="{e(b.text)}"></p>'
    return ""


def render_html(title: str, sections: list[Section], warnings: list[str]) -> str:
    """A self-contained HTML page (pictures must be readable to be embedded)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)} — mdk report</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    if warnings:
        parts.append('<div class="warn"><strong>Warnings</strong><ul>'
                     + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul></div>")
    for sec in sections:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        parts += [_html_block(b, embed=True) for b in sec.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_MD_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _md(text: Any) -> str:
    """Text from files in Markdown: no raw HTML (``<script>``, ``onerror=``), no links
    or images made from brackets, no control characters."""
    text = html.escape(_MD_CONTROL.sub("", str(text)), quote=False)
    return re.sub(r"([\\`\[\]!])", r"\\\1", text)


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def _md_block(b: Block) -> str:
    if b.kind == "p":
        return _md(b.text)
    if b.kind == "h3":
        return f"### {_md(b.text)}"
    if b.kind in ("pre", "details"):
        longest = max((len(m) for m in re.findall(r"`+", b.text)), default=0)
        fence = "`" * max(3, longest + 1)
        body = f"{fence}\n{b.text.rstrip()}\n{fence}"
        return body if b.kind == "pre" else f"<details><summary>raw result</summary>\n\n" \
            f"{body}\n\n</details>"
    if b.kind == "list":
        return "\n".join(f"- {_md(i)}" for i in b.items)
    if b.kind == "table":
        lines = ["| " + " | ".join(_md_cell(h) for h in b.head) + " |",
                 "|" + "---|" * len(b.head)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if b.kind == "img" and b.image is not None:
        return f"![{_md(b.text)}]({b.image.name})"
    return ""


def render_markdown(title: str, sections: list[Section], warnings: list[str]) -> str:
    """The report as Markdown; pictures are referenced by file name (beside the page)."""
    parts = [f"# {_md(title)}"]
    if warnings:
        parts.append("**Warnings**\n\n" + "\n".join(f"- {_md(w)}" for w in warnings))
    for sec in sections:
        parts.append(f"## {_md(sec.title)}")
        parts += [t for t in (_md_block(b) for b in sec.blocks) if t]
    return "\n\n".join(parts) + "\n"


def build_report(
    target: str | Path,
    out: str | Path | None = None,
    *,
    markdown: bool = False,
    ncols: int | None = None,
) -> ReportResult:
    """Write the report of a run folder (or of one synthetic-set file).

    HTML by default, to ``out`` or ``<run folder>/report.html``: one self-contained file.
    With ``markdown``, ``out`` (default ``<run folder>/report.md``) plus its PNG pictures
    beside it. ``ncols`` caps the image grid's columns. Returns the page's path, every
    file written and the warnings (also listed on the page).
    """
    target = Path(target)
    run_dir = target if target.is_dir() else target.parent
    page = Path(out) if out else run_dir / ("report.md" if markdown else "report.html")
    with tempfile.TemporaryDirectory(prefix="mdk-report-") as tmp:
        folder = page.parent if markdown else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pictures = _Pictures(folder, page.stem)
        title, sections, warnings = _sections(target, pictures, ncols)
        if not pictures.enabled:
            warnings.insert(0, f"matplotlib is not installed, so this report has no "
                               f"pictures; {PLOT_EXTRA_HINT}")
        warnings += [f"picture not drawn: {f}" for f in pictures.failures]
        text = (render_markdown if markdown else render_html)(title, sections, warnings)
        atomic_write(page, lambda t: Path(t).write_text(text, encoding="utf-8"))
    files = [page] + (pictures.written if markdown else [])
    return ReportResult(page, files, warnings)
