"""Plugin discovery through entry points (the only module that knows how).

Every component kind is one entry-point group. Built-in components register through the
toolkit's own ``pyproject.toml`` exactly as a third-party package does. Discovery uses
the ``entrypoints`` package; keeping it behind this module makes a move to
``importlib.metadata`` a one-file change.

Two packages registering the same name in one group is an error that names both; the
qualified form ``package:name`` picks one. Importing is lazy: a run imports only the
components its recipe names. Validating parameters imports only a component's
parameters model where its package names one in the optional group ``mdk.params.<kind>``
(entry ``name = module:Model``, a module that does not import torch), else the
component itself; :meth:`Registry.describe` reads descriptions from the sources without
importing, and with ``check=True`` imports everything to report broken plugins without
failing. The installed distributions are read once for every group.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import reprlib
import sys
import typing
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import entrypoints
from pydantic import BaseModel, ValidationError

from ..api.params import ComponentRef
from ..core.errors import PluginError, RecipeError

KINDS: dict[str, str] = {
    "datasets": "mdk.datasets",
    "backbones": "mdk.backbones",
    "critics": "mdk.critics",
    "dd_losses": "mdk.dd_losses",
    "regularizers": "mdk.regularizers",
    "evaluators": "mdk.evaluators",
    "augmentations": "mdk.augmentations",
    "coresets": "mdk.coresets",
    "loggers": "mdk.loggers",
}
#: the optional group of each kind naming the components' parameters models (torch-free)
PARAMS_GROUPS: dict[str, str] = {kind: "mdk.params." + kind for kind in KINDS}
#: how messages name one plugin of each kind
SINGULAR: dict[str, str] = {
    "datasets": "dataset", "backbones": "backbone", "critics": "critic",
    "dd_losses": "dd loss", "regularizers": "regularizer", "evaluators": "evaluator",
    "augmentations": "augmentation", "coresets": "coreset", "loggers": "logger",
}


def singular(kind: str) -> str:
    """``dd_losses`` -> ``dd loss``: one plugin of ``kind``, as messages name it."""
    return SINGULAR.get(kind, kind.rstrip("s").replace("_", " "))


def _norm_pkg(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class PluginInfo:
    """One registered component as :func:`Registry.describe` reports it."""

    kind: str
    name: str
    package: str
    version: str
    target: str
    description: str = ""
    error: str | None = None

    @property
    def qualified(self) -> str:
        return f"{_norm_pkg(self.package)}:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "target": self.target,
            "description": self.description,
            "error": self.error,
        }


@dataclass
class Problem:
    """One invalid value: dotted key path (relative to the component) and message."""

    path: tuple[str | int, ...]
    message: str


class ParamsError(RecipeError):
    """Parameters of one or more components are invalid; ``problems`` lists them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(
            "; ".join(".".join(map(str, p.path)) + ": " + p.message for p in problems)
        )


def _pkg_of(ep: entrypoints.EntryPoint) -> tuple[str, str]:
    d = ep.distro
    name = d.name if d else "?"
    ver = d.version if d and d.version else None
    if ver is None:
        # entrypoints leaves the version empty for some dist-info layouts
        try:
            ver = metadata.version(name)
        except metadata.PackageNotFoundError:
            ver = "?"
    return name, ver


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _first_doc_line(obj: Any) -> str:
    return _first_line(getattr(obj, "__doc__", None))


def _module_source(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found without executing it or its packages."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is executed
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    dirs = [Path(d) for d in spec.submodule_search_locations or []]
    for i, part in enumerate(parts[1:], start=2):
        last = i == len(parts)
        for d in dirs:
            if (d / part / "__init__.py").is_file():
                if last:
                    return d / part / "__init__.py"
                dirs = [d / part]
                break
            if last and (d / f"{part}.py").is_file():
                return d / f"{part}.py"
        else:
            dirs = [d / part for d in dirs if (d / part).is_dir()]  # namespace packages
            if last or not dirs:
                return None
    return None


def _source_doc_line(module: str, name: str, depth: int = 0) -> str | None:
    """First docstring line of class (or function) ``name`` of ``module``, read from its
    source without importing; a name the module imports from another module is followed
    there. None when the source or the definition is not found."""
    if module in sys.modules:  # imported already: ask the object itself
        obj = getattr(sys.modules[module], name, None)
        return None if obj is None else _first_doc_line(obj)
    path = _module_source(module)
    if path is None or depth > 4:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return _first_line(ast.get_docstring(node, clean=False))
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) != name:
                continue
            base = module.split(".")
            if node.level:  # relative to this module's package
                keep = len(base) - (node.level - (path.name == "__init__.py"))
                if keep < 1:
                    return None
                base = base[:keep]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            return _source_doc_line(target, alias.name, depth + 1) if target else None
    return None


class Registry:
    """The components installed in this environment.

    ``path`` restricts discovery to those directories (tests use it to add a fake
    distribution); by default ``sys.path`` is searched.
    """

    def __init__(self, path: list[str] | None = None):
        self._path = path
        self._groups: dict[str, list[entrypoints.EntryPoint]] | None = None

    def _group(self, group: str) -> list[entrypoints.EntryPoint]:
        """The entry points of ``group``; the first call reads every ``mdk.`` group of
        every installed distribution in one walk."""
        if self._groups is None:
            groups: dict[str, list[entrypoints.EntryPoint]] = {}
            wanted = {*KINDS.values(), *PARAMS_GROUPS.values()}
            for config, distro in entrypoints.iter_files_distros(path=self._path):
                for name in wanted.intersection(config.sections()):
                    for key, text in config[name].items():
                        # as entrypoints.get_group_all: a malformed entry is a warning
                        with entrypoints.BadEntryPoint.err_to_warnings():
                            groups.setdefault(name, []).append(
                                entrypoints.EntryPoint.from_string(text, key, distro))
            self._groups = groups
        return self._groups.get(group, [])

    def entries(self, kind: str) -> list[entrypoints.EntryPoint]:
        if kind not in KINDS:
            raise PluginError(
                f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}"
            )
        return self._group(KINDS[kind])

    def params_entry(self, kind: str, ep: entrypoints.EntryPoint) -> entrypoints.EntryPoint | None:
        """The ``mdk.params.<kind>`` entry of the same name and distribution as ``ep``
        (the component's parameters model), or None when its package declares none."""
        for pep in self._group(PARAMS_GROUPS[kind]):
            # one walk made both entries: the same distribution is the same object
            if pep.name == ep.name and pep.distro is ep.distro:
                return pep
        return None

    def names(self, kind: str) -> list[str]:
        return sorted({ep.name for ep in self.entries(kind)})

    def resolve(self, kind: str, name: str) -> entrypoints.EntryPoint:
        """Find the single entry point called ``name`` (or ``package:name``)."""
        pkg = None
        if ":" in name:
            pkg, name = name.split(":", 1)
        found = [ep for ep in self.entries(kind) if ep.name == name]
        if pkg is not None:
            found = [ep for ep in found if _norm_pkg(_pkg_of(ep)[0]) == _norm_pkg(pkg)]
        if not found:
            hint = difflib.get_close_matches(name, self.names(kind), n=1, cutoff=0.5)
            known = ", ".join(self.names(kind)) or "none installed"
            msg = f"no {singular(kind)} plugin named {name!r}"
            if pkg is not None:
                msg += f" in package {pkg!r}"
            msg += f" (did you mean {hint[0]!r}?)" if hint else f"; available: {known}"
            raise PluginError(msg)
        if len(found) > 1:
            pkgs = " and ".join(f"{_pkg_of(ep)[0]} ({ep.module_name})" for ep in found)
            qual = ", ".join(f"'{_norm_pkg(_pkg_of(ep)[0])}:{name}'" for ep in found)
            raise PluginError(
                f"{singular(kind)} name {name!r} is registered by more than "
                f"one package: {pkgs}. Name one of them qualified: {qual}."
            )
        return found[0]

    def load(self, kind: str, name: str) -> type:
        """Import the component class; an import failure is a hard error here."""
        ep = self.resolve(kind, name)
        return self._load_ep(kind, ep)

    def _import(self, kind: str, ep: entrypoints.EntryPoint) -> Any:
        try:
            return ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            pkg, ver = _pkg_of(ep)
            raise PluginError(
                f"plugin {ep.name!r} ({kind}) from package {pkg} {ver} failed to import "
                f"{ep.module_name}:{ep.object_name}: {type(exc).__name__}: {exc}"
            ) from exc

    def _load_ep(self, kind: str, ep: entrypoints.EntryPoint, schema: bool = False) -> type:
        """Import the component; ``schema`` also builds its parameters' JSON Schema, which
        finds models that load but cannot describe themselves (``describe(check=True)``)."""
        obj = self._import(kind, ep)
        _check_model(kind, ep, getattr(obj, "Params", None),
                     "it has no nested Pydantic model called Params", schema)
        return obj

    def params_model(self, kind: str, name: str) -> type[BaseModel]:
        """The parameters model of component ``name``: imported from its ``mdk.params``
        entry where its package declares one (without importing the component), else the
        component's ``Params``."""
        ep = self.resolve(kind, name)
        pep = self.params_entry(kind, ep)
        if pep is None:
            return self._load_ep(kind, ep).Params
        model = self._import(kind, pep)
        _check_model(kind, pep, model, f"{pep.module_name}:{pep.object_name}, its "
                     f"{PARAMS_GROUPS[kind]} entry, is not a Pydantic model", False)
        return model

    def describe(self, kind: str | None = None, check: bool = False) -> list[PluginInfo]:
        """Report every plugin (of ``kind``): name, package and the first line of its
        docstring, read from its source without importing it (a plugin whose source is not
        found is imported). ``check`` imports every plugin and builds its parameters'
        JSON Schema instead, reporting broken ones with their error."""
        out = []
        for k in [kind] if kind else list(KINDS):
            for ep in self.entries(k):
                pkg, ver = _pkg_of(ep)
                target = f"{ep.module_name}:{ep.object_name}"
                doc = None if check else _source_doc_line(ep.module_name, ep.object_name)
                if doc is not None:
                    out.append(PluginInfo(k, ep.name, pkg, ver, target, doc))
                    continue
                try:
                    obj = self._load_ep(k, ep, schema=True)
                except PluginError as exc:
                    out.append(PluginInfo(k, ep.name, pkg, ver, target, error=str(exc)))
                else:
                    out.append(PluginInfo(k, ep.name, pkg, ver, target, _first_doc_line(obj)))
        return sorted(out, key=lambda p: (list(KINDS).index(p.kind), p.name, p.package))

    def provenance(self, kind: str, name: str) -> dict[str, str]:
        ep = self.resolve(kind, name)
        pkg, ver = _pkg_of(ep)
        return {"kind": kind, "name": ep.name, "package": pkg, "version": ver,
                "target": f"{ep.module_name}:{ep.object_name}"}

    def validate(self, kind: str, ref: ComponentRef | dict[str, Any]) -> BaseModel:
        """Validate a component reference's parameters, nested references included.

        Raises :class:`ParamsError` whose problem paths are relative to the reference
        (``("critic", "out_dim")``), or :class:`PluginError` for an unknown name.
        """
        if isinstance(ref, dict):
            ref = ComponentRef.model_validate(ref)
        model = self.params_model(kind, ref.name)
        try:
            params = model.model_validate(ref.params)
        except ValidationError as exc:
            raise ParamsError(
                [Problem(tuple(e["loc"]), _pretty(e, model)) for e in exc.errors()]
            ) from None
        problems: list[Problem] = []
        for field, value in params:
            for sub, sref in _refs(value):
                try:
                    self.validate(sref.kind, sref)
                except ParamsError as exc:
                    problems += [Problem((field, *sub, *p.path), p.message) for p in exc.problems]
                except PluginError as exc:
                    problems.append(Problem((field, *sub, "name"), str(exc)))
        if problems:
            raise ParamsError(problems)
        return params

    def nested(self, params: BaseModel) -> list[ComponentRef]:
        """Component references inside a validated parameters model, recursively."""
        out = []
        for _, value in params:
            for _, ref in _refs(value):
                out.append(ref)
                out += self.nested(self.validate(ref.kind, ref))
        return out

    def build(self, kind: str, ref: ComponentRef | dict[str, Any], **context: Any) -> Any:
        """Validate ``ref`` and construct the component with the kind's context."""
        if isinstance(ref, dict):
            ref = ComponentRef.model_validate(ref)
        from ..api.plugins import conform  # torch: only a build needs it

        params = self.validate(kind, ref)
        cls = self.load(kind, ref.name)
        if type(params) is not cls.Params:
            ep = self.resolve(kind, ref.name)
            pkg, ver = _pkg_of(ep)
            raise PluginError(
                f"plugin {ep.name!r} ({kind}) from package {pkg} {ver}: its "
                f"{PARAMS_GROUPS[kind]} entry names {type(params).__module__}."
                f"{type(params).__qualname__}, but the class's Params is "
                f"{cls.Params.__module__}.{cls.Params.__qualname__}; they must be one model"
            )
        try:
            return conform(cls(params, **context), kind)
        except (ValueError, TypeError) as exc:
            # a component rejecting its context (e.g. a depth too large for the images)
            raise PluginError(
                f"{singular(kind)} {ref.name!r} could not be built: {exc}"
            ) from exc


def _check_model(kind: str, ep: entrypoints.EntryPoint, model: Any, missing: str,
                 schema: bool) -> None:
    """Refuse a parameters model that is not a Pydantic model or (``schema``) cannot build
    its JSON Schema."""
    ok = isinstance(model, type) and issubclass(model, BaseModel)
    detail = missing
    if ok and schema:
        try:
            model.model_json_schema()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        pkg, ver = _pkg_of(ep)
        raise PluginError(
            f"plugin {ep.name!r} ({kind}) from package {pkg} {ver} has a broken "
            f"parameters model: {detail}"
        )


def _refs(value: Any) -> list[tuple[tuple[str | int, ...], ComponentRef]]:
    if isinstance(value, ComponentRef) and value.kind:
        return [((), value)]
    if isinstance(value, (list, tuple)):
        return [((i, *s), r) for i, v in enumerate(value) for s, r in _refs(v)]
    return []


def _pretty(err: dict[str, Any], model: type[BaseModel] | None = None) -> str:
    """One validation error as a short message; an unknown key of ``model`` (or of a
    model nested in it, along the error's location) gets the closest known key."""
    if err["type"] == "extra_forbidden":
        loc = tuple(err["loc"])
        known = _known_keys(model, loc[:-1]) if model is not None and loc else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        return f"unknown key (did you mean {hint[0]!r}?)" if hint else "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("missing",):
        msg += f" (got {_bounded_repr(err['input'])})"
    return msg


def _known_keys(model: Any, path: tuple[str | int, ...]) -> list[str]:
    """The keys (field names and aliases) of the Pydantic model found by following
    ``path`` from ``model`` through fields, optionals and lists; [] if none."""
    for part in path:
        if isinstance(part, int):
            continue  # a list index: the model is the list's item type (unwrapped below)
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        field = fields.get(part) or next(
            (f for f in fields.values() if f.alias == part), None)
        if field is None:
            return []
        model = _model_in(field.annotation)
    fields = getattr(model, "model_fields", None) or {}
    return [k for name, f in fields.items() for k in {name, f.alias or name}]


def _model_in(annotation: Any) -> Any:
    """The Pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def _bounded_repr(value: Any) -> str:
    """A short repr of an untrusted value, whatever its size (an expanded YAML alias)."""
    text = _REPR.repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def plugin_of_error(exc: BaseException, registry: Registry | None = None) -> str | None:
    """Name the installed plugin (not this toolkit's own) whose code raised ``exc``:
    the deepest traceback frame in a plugin's module, as ``plugin 'x' (kind) from
    package p v``; None when no plugin code is on the traceback."""
    registry = registry or default_registry()
    owners: dict[str, str] = {}  # top-level module -> description
    for kind in KINDS:
        try:
            entries = registry.entries(kind)
        except Exception:  # discovery itself failing must not hide the original error
            continue
        for ep in entries:
            top = (ep.module_name or "").split(".")[0]
            if top and top != __name__.split(".")[0] and top not in owners:
                pkg, ver = _pkg_of(ep)
                owners[top] = f"plugin {ep.name!r} ({kind}) from package {pkg} {ver}"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    for module in reversed(frames):
        top = str(module).split(".")[0]
        if top in owners:
            return owners[top]
    return None


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the running environment (cached)."""
    return Registry()
