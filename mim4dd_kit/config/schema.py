"""The recipe JSON Schema for editors (``mdk schema``).

Each component field (``backbone``, ``dd_loss``, ``evaluators[]``, nested refs such as a
regularizer's ``critic``...) is the plugin name as a string, or a mapping whose ``name``
selects the parameters schema: the ``name`` field is the discriminator, written as a
chain of ``if name == X then <X's parameters>`` so that any JSON Schema validator (and an
editor's YAML language server) reports a misspelt key as an unexpected property of that
one component rather than "not valid under any of the given schemas". Every default is
included, those Pydantic computes with a ``default_factory`` too.

A name registered by two installed packages does not stop the schema: that component is
listed under its qualified names (``package:name``) and a warning says so.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, NoDefault

from ..api import (
    AugmentationRef,
    BackboneRef,
    CriticRef,
    DatasetRef,
    EvaluatorRef,
    LoggerRef,
    LossRef,
    RegularizerRef,
)
from ..core.files import atomic_write
from .recipe import Recipe, read_yaml_file
from .registry import Registry, default_registry, singular

#: the reference classes whose schema lists the installed plugins
REF_CLASSES = [DatasetRef, BackboneRef, CriticRef, LossRef, RegularizerRef, AugmentationRef,
               EvaluatorRef, LoggerRef]
#: the first line that points an editor's YAML language server at a schema
MODELINE = "# yaml-language-server: $schema="


class WithFactoryDefaults(GenerateJsonSchema):
    """Pydantic's schema generator, plus the defaults made by a ``default_factory``."""

    def get_default_value(self, schema: Any) -> Any:
        if "default" in schema:
            return schema["default"]
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return NoDefault
        try:
            return factory()
        except Exception:
            return NoDefault


def model_schema(model: type, **kwargs: Any) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, schema_generator=WithFactoryDefaults,
                                   **kwargs)


def component_schema(registry: Registry, kind: str, defs: dict[str, Any],
                     warnings: list[str]) -> dict[str, Any] | None:
    """The schema of one component field of ``kind``: a plugin name, or a mapping whose
    ``name`` picks the plugin's parameters; None when no plugin of ``kind`` loads."""
    infos = [i for i in registry.describe(kind, check=True) if not i.error]
    counts = Counter(i.name for i in infos)
    names: list[str] = []
    branches = []
    for info in infos:
        name = info.name
        if counts[name] > 1:
            name = info.qualified
            packages = sorted(i.package for i in infos if i.name == info.name)
            note = (f"{singular(kind)} name {info.name!r} is registered by "
                    f"{' and '.join(packages)}; the schema lists it qualified "
                    f"(package:name)")
            if note not in warnings:
                warnings.append(note)
        params = model_schema(registry.load(kind, info.qualified).Params)
        props = {"name": {"const": name, "description": info.description}}
        props.update(params.get("properties", {}))
        branches.append({
            "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
            "then": {
                "properties": props,
                "required": ["name", *params.get("required", [])],
                "additionalProperties": False,
            },
        })
        names.append(name)
        for key, value in params.get("$defs", {}).items():
            defs.setdefault(key, value)
    if not names:
        return None
    return {
        "type": ["string", "object"],
        "if": {"type": "string"},
        "then": {"enum": names},
        "else": {
            "required": ["name"],
            "properties": {"name": {"enum": names, "description": "the plugin"}},
            "discriminator": {"propertyName": "name"},
            "allOf": branches,
        },
    }


def recipe_schema(registry: Registry | None = None,
                  warnings: list[str] | None = None) -> dict[str, Any]:
    """JSON Schema of recipes, each component field listing the installed plugins; notes
    such as name clashes are appended to ``warnings``."""
    registry = registry or default_registry()
    warnings = [] if warnings is None else warnings
    schema = model_schema(Recipe)
    defs = schema.setdefault("$defs", {})
    ref_defs: dict[str, Any] = {}
    for ref_cls in REF_CLASSES:
        options = component_schema(registry, ref_cls.kind, defs, warnings)
        if options is not None:
            ref_defs[ref_cls.__name__] = options
    defs.update(ref_defs)  # last, so that no plugin's own copy of a ref replaces them
    return _nullable_as_condition(schema)


def _nullable_as_condition(node: Any) -> Any:
    """``anyOf: [X, {type: null}]`` (Pydantic's ``X | None``) becomes ``if null, else X``,
    so that a wrong value is reported by X's own errors, not as "not valid under any of
    the given schemas"."""
    if isinstance(node, list):
        return [_nullable_as_condition(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_as_condition(v) for k, v in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = options[0] if options[1] == {"type": "null"} else options[1]
        del node["anyOf"]
        node.update({"if": {"type": "null"}, "else": other})
    return node


def link_recipe(recipe: Path, schema_file: Path) -> str:
    """Make ``MODELINE`` + the schema's path (relative to the recipe) the first line of
    ``recipe`` (an existing one is replaced); returns the line."""
    text = read_yaml_file(recipe, "recipe file")
    target = os.path.relpath(schema_file.resolve(), recipe.resolve().parent)
    line = MODELINE + Path(target).as_posix()
    lines = text.splitlines(keepends=True)
    if lines and lines[0].startswith(MODELINE):
        lines = lines[1:]
    new = line + "\n" + "".join(lines)
    atomic_write(recipe, lambda tmp: Path(tmp).write_text(new, encoding="utf-8"))
    return line


#: the name the command line and earlier versions use
recipe_json_schema = recipe_schema
