"""The recipe schema, its YAML loading, command-line overrides and validation.

A recipe is YAML validated by Pydantic (unknown keys are errors). Components are written
inline, ``backbone: {name: convnet, width: 128}``: every key but ``name`` is a parameter
validated by the component's own ``Params`` model, so errors name the full key path and,
where the key is in the file, its line: ``recipe.yaml:5: backbone.depht: unknown key``.

YAML is read with YAML 1.2 scalar rules rather than PyYAML's 1.1 defaults: ``1e-3`` is a
float, only ``true``/``false`` are booleans (``on``/``no`` stay strings, so a typed field
rejects them), and ``0012`` is the integer 12, not octal.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..api import (
    AugmentationRef,
    BackboneRef,
    ComponentRef,
    DatasetRef,
    EvaluatorRef,
    LoggerRef,
    LossRef,
    NumbersModel,
    RegularizerRef,
)
from ..core.errors import PluginError, RecipeError
from .performance import PerformanceSettings
from .registry import ParamsError, Problem, Registry, _pretty, default_registry


class _Strict(NumbersModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Schedule(_Strict):
    milestones: list[int] = Field(
        default_factory=list, description="iterations at which the image lr is multiplied"
    )
    gamma: float = Field(0.5, gt=0, description="factor applied at each milestone")


class SyntheticSettings(_Strict):
    ipc: int = Field(10, ge=1, description="synthetic images per class")
    init: Literal["real", "noise"] = Field("real", description="initialisation")
    iterations: int = Field(1000, ge=0, description="outer distillation iterations")
    lr: float = Field(1.0, gt=0, description="learning rate of the synthetic images")
    momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum of the images")
    schedule: Schedule = Field(default_factory=Schedule)
    batch_real: int = Field(256, ge=1, description="real images per class per iteration")
    learn_lr: bool = Field(False, description="learn a training lr with the images")
    lr_init: float | None = Field(
        None, gt=0, description="initial value of a learned lr; null: the dd loss's own "
        "(mtt: dd_loss.lr_teacher, bptt: dd_loss.inner_lr), else 0.01")
    lr_lr: float = Field(1e-5, gt=0, description="learning rate of the learned lr")
    formation: int = Field(
        1, ge=1, le=8, description="multi-formation factor: each stored image decodes to "
        "formation**2 images (mim4dd_kit/io/formation.py); 1 = plain images"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="clip the norm of the synthetic images' gradient to this "
        "value before each image step (BPTT's reference: 2); null: off")


class OutputSettings(_Strict):
    dir: Path | None = Field(None, description="run folder; default runs/<name>")
    file: str = Field("synthetic.safetensors", description="synthetic set file name, "
                      "inside the run folder (no folder part)")
    checkpoint_every: int = Field(100, ge=0, description="iterations between checkpoints")
    evaluate_every: int | None = Field(
        None, ge=1, description="score the set with the recipe's evaluators at iteration 0 "
        "and every this many iterations (the final evaluation is the last checkpoint) and "
        "record best_of, the max over the checkpoints (MTT's reporting; never the headline); "
        "null: only the final evaluation"
    )
    log_every: int = Field(
        0, ge=0, description="iterations between plain progress lines when no progress bar "
        "is shown (stderr not a terminal); 0: about 20 lines per run"
    )
    log_seconds: float = Field(
        60.0, gt=0, description="longest wait, in seconds, between two plain progress lines"
    )

    @field_validator("file")
    @classmethod
    def _inside_the_run_folder(cls, v: str) -> str:
        if (v in ("", ".", "..") or "/" in v or "\\" in v or "\x00" in v or v.startswith(".")
                or Path(v).is_absolute() or Path(v).name != v):
            raise ValueError("must be a plain file name inside the run folder (no folder "
                             "part, no '..', not absolute, not hidden)")
        return v


class ValidationSettings(_Strict):
    """Training images held out of distillation so that settings can be chosen on them."""

    per_class: int = Field(ge=1, description="training images of every class held out")
    seed: int = Field(
        0, ge=0, lt=2**62, description="seed of the held-out choice, independent of the "
        "run's seed (runs with the same seed hold out the same images)"
    )


class Recipe(_Strict):
    """A distillation run, declaratively."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="run name")
    seed: int = Field(0, ge=0, lt=2**62, description="seed of every random draw (offsets "
                      "are added to it, so it stays well inside torch's 64-bit range)")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    dataset: DatasetRef
    validation: ValidationSettings | None = Field(
        None, description="hold out training images of every class as a validation split, "
        "never seen by distillation and scored by evaluators with `split: validation`; "
        "null: distill from the whole training split"
    )
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
    backbone: BackboneRef = Field(default_factory=lambda: BackboneRef(name="convnet"))
    dd_loss: LossRef = Field(default_factory=lambda: LossRef(name="dm"))
    regularizer: RegularizerRef | None = None
    augmentation: AugmentationRef | None = Field(
        default_factory=lambda: AugmentationRef(name="dsa")
    )
    evaluators: list[EvaluatorRef] = Field(
        default_factory=lambda: [EvaluatorRef(name="train_from_scratch")]
    )
    output: OutputSettings = Field(default_factory=OutputSettings)
    loggers: list[LoggerRef] = Field(
        default_factory=list, description="experiment trackers that follow the run, e.g. "
        "[{name: tensorboard}] (docs/following-runs.md)"
    )
    performance: PerformanceSettings = Field(
        default_factory=PerformanceSettings,
        description="how the arithmetic runs (precision, layout, compilation, chunking)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v

    def components(self) -> list[tuple[str, ComponentRef]]:
        """(key path, reference) of every top-level component, in recipe order."""
        out: list[tuple[str, ComponentRef]] = [
            ("dataset", self.dataset),
            ("backbone", self.backbone),
            ("dd_loss", self.dd_loss),
        ]
        if self.regularizer is not None:
            out.append(("regularizer", self.regularizer))
        if self.augmentation is not None:
            out.append(("augmentation", self.augmentation))
        out += [(f"evaluators.{i}", ev) for i, ev in enumerate(self.evaluators)]
        out += [(f"loggers.{i}", lg) for i, lg in enumerate(self.loggers)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json(by_alias=True))

    def fingerprint(self) -> str:
        """Hash of what defines the result: not the output folder, the device or the
        speed options, so a run may resume on another device or with other settings."""
        d = self.to_dict()
        for key in ("output", "device", "performance", "loggers"):
            d.pop(key, None)
        if d.get("synthetic", {}).get("formation") == 1:
            del d["synthetic"]["formation"]  # the default: fingerprints as before the field
        if d.get("validation") is None:  # recipes from before the field hash as they did
            d.pop("validation", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans, ints and floats."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
# 1.2 ints are decimal: `0012` is 12 (PyYAML's 1.1 constructor would read octal)
_Yaml12Loader.add_constructor(
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10)
)


#: the largest YAML input read (characters), the most values it may stand for (an alias
#: counts each time it is used, so a few hundred bytes cannot expand to billions of
#: values) and the deepest nesting
MAX_YAML_CHARS = 1_000_000
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 50


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse duplicate keys, nesting deeper than MAX_YAML_DEPTH (also cycles of aliases)
    and more than MAX_YAML_VALUES values once aliases are expanded, before constructing."""
    sizes: dict[int, int] = {}  # id(node) -> values it expands to; an alias is the same node

    def where(node: yaml.Node) -> str:
        return f"{source}:{node.start_mark.line + 1}"

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise RecipeError(f"{where(node)}: nested more than {MAX_YAML_DEPTH} levels deep "
                              "(or an alias refers to itself)")
        known = sizes.get(id(node))
        if known is not None:
            return known
        n = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        raise RecipeError(f"{where(key)}: duplicate key "
                                          f"{_short_repr(key.value)}; a key may appear once")
                    seen.add((key.tag, key.value))
                n += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for value in node.value:
                n += size(value, depth + 1)
        if n > MAX_YAML_VALUES:
            raise RecipeError(f"{where(node)}: this value expands to more than "
                              f"{MAX_YAML_VALUES:,} values (aliases count each time they are "
                              "used); a recipe is far smaller")
        sizes[id(node)] = n
        return n

    size(root, 0)


def parse_yaml(text: str, source: str = "<recipe>") -> Any:
    """YAML 1.2 scalars, no duplicate keys, bounded size, depth and alias expansion."""
    if len(text) > MAX_YAML_CHARS:
        raise RecipeError(f"{source}: {len(text):,} characters; a recipe or sweep file may "
                          f"have at most {MAX_YAML_CHARS:,}")
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where}: malformed YAML: {_short_repr(problem, 200)}") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _line_of(root: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest node of ``path`` present in the composed YAML."""
    node, line = root, None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value), the value read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {text!r} has an empty key in {key!r}")
    return parts, parse_yaml(raw, f"override {text!r}") if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise RecipeError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is not a mapping"
                )
            if isinstance(node.get(part), str):  # shorthand component `backbone: convnet`
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            raise RecipeError(f"override {text!r}: {'.'.join(parts[:-1])} is not a mapping")
    return data


def _override_of(path: tuple[str | int, ...], overrides: list[str]) -> str | None:
    """The last ``--set`` that wrote ``path`` or a mapping above it, or a key below it."""
    found = None
    key = tuple(map(str, path))
    for text in overrides:
        try:
            parts = tuple(parse_override(text)[0])
        except RecipeError:
            continue
        n = min(len(parts), len(key))
        if n and parts[:n] == key[:n]:
            found = text
    return found


def _format(source: str, root: yaml.Node | None, problems: list[Problem],
            overrides: list[str] = ()) -> RecipeError:
    lines = []
    for p in problems:
        dotted = '.'.join(map(str, p.path)) or '(top level)'
        override = _override_of(p.path, list(overrides)) if p.path else None
        if override is not None:  # the value came from the command line, not the file
            lines.append(f"{source}: --set {override}: {dotted}: {p.message}")
            continue
        line = _line_of(root, p.path)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {dotted}: {p.message}")
    head = "invalid recipe: " if len(lines) > 1 else ""
    return RecipeError(head + "; ".join(lines))


def validate_recipe(
    data: Any,
    *,
    source: str = "<recipe>",
    text: str | None = None,
    registry: Registry | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Recipe:
    """Validate a recipe mapping and every component's parameters (no data is loaded).

    ``overrides`` are the ``--set`` texts applied to ``data``: a problem at a key one of
    them wrote is reported as that override's, not as a line of the file."""
    registry = registry or default_registry()
    root = yaml.compose(text, Loader=_Yaml12Loader) if text else None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping of keys to values")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _format(
            source, root, [Problem(tuple(e["loc"]), _pretty(e, Recipe)) for e in exc.errors()],
            overrides,
        ) from None
    problems: list[Problem] = []
    for key, ref in recipe.components():
        prefix = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        try:
            registry.validate(ref.kind, ref)
        except ParamsError as exc:
            problems += [Problem((*prefix, *p.path), p.message) for p in exc.problems]
        except PluginError as exc:
            problems.append(Problem((*prefix, "name"), str(exc)))
    if problems:
        raise _format(source, root, problems, overrides)
    return recipe


def read_yaml_file(path: Path, what: str) -> str:
    """The text of a YAML input file; a missing or unreadable file is a RecipeError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {what} {path}: {exc}") from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None
) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    text = read_yaml_file(path, "recipe file")
    data = parse_yaml(text, str(path))
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if overrides:
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping of keys to values")
        data = apply_overrides(data, list(overrides))
    return validate_recipe(data, source=str(path), text=text, registry=registry,
                           overrides=overrides)
