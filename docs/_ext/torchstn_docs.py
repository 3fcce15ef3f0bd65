"""Sphinx extension for torchstn's reference: every table is generated from the code.

* ``.. public-names:: MODULE`` -- a table of ``MODULE.__all__``: each name, linked to
  where it is documented, with the first line of its docstring. New public names
  appear without editing a page.
* ``.. model-registry::`` -- every name of :func:`torchstn.list_models`, linked to its
  builder, with the builder's first docstring line.
* ``.. submodules:: PACKAGE`` -- every public submodule of a package, documented.
* ``.. gallery:: DIR`` -- one section per ``DIR/*.py``: its module docstring, then its
  source, included literally.
* Aliases resolve: ``torchstn.warp`` and ``torchstn.sampling.warp`` are the same object,
  documented once (at the package that defines it); a reference to the other name is
  sent to that entry instead of failing.
* References into other projects (torch, numpy, the standard library, ...) cannot be
  checked offline (no intersphinx inventories without a network) and are ignored by
  name. A reference to a torchstn name that exists but has no entry (a private helper,
  an attribute without a docstring, a module's type alias) is plain text; one to a
  torchstn name that does not exist stays an error, so ``-W -n`` fails the build.
* Docstring habits of the project that napoleon would misread are read as meant: an
  Args entry whose names wrap (``a, b,`` / ``c: text``), a bare shape ``(B, *size, n)``,
  a property or constant doc-comment that begins with ``words: text``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys
import types
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# top-level packages whose names a docstring or an annotation may mention
EXTERNAL = sorted(
    {"torch", "numpy", "np", "matplotlib", "PIL", "tqdm", "safetensors", "onnx", "onnxruntime", "kornia"}
    | set(sys.stdlib_module_names)
)
EXTERNAL_RE = r"(%s)(\..*)?" % "|".join(re.escape(m) for m in EXTERNAL)
# names autodoc writes as the annotation spelled them (`nn.Module` from `from torch import nn`)
BARE_EXTERNAL_RE = r"(Tensor|Path|nn\.[A-Z]\w*|F\.\w+)"
# private names (a `_module`, a `_TypeVar`): not part of the reference, shown as plain text
PRIVATE_RE = r"(.*\.)?_\w+(\..*)?"


_ROLE = re.compile(r":(class|func|meth|attr|data|obj|mod|exc):`(~?)([^`~<]+)`")


def _absolute_roles(line: str, module: str) -> str:
    """Relative references resolved in ``module`` (where the docstring was written), made absolute.

    The page documents a name under its public package, so a docstring's ``:func:`helper```
    would otherwise be looked up there and not in the module that defines both.
    """

    def absolute(m: re.Match[str]) -> str:
        role, tilde, target = m.groups()
        full = f"{module}.{target}"
        if target.startswith("torchstn") or _lookup(full) is None:
            return m[0]
        return f":{role}:`~{full}`" if tilde or "." not in target else f":{role}:`{target} <{full}>`"

    return _ROLE.sub(absolute, line)


def _first_line(obj: object) -> str:
    """The summary line of a docstring, its relative references made absolute for another page."""
    doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
    if not doc:
        return ""
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    summary = " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph
    if len(summary) > 200 and ". " in summary:
        summary = summary[: summary.index(". ") + 1]  # or its first sentence
    return _absolute_roles(_escape_shape_stars(summary), module)


def _role(obj: object) -> str:
    if _is_type(obj) and not inspect.isclass(obj):
        return "data"  # a typing alias (callable, but not a function)
    if inspect.isclass(obj):
        return "class"
    if inspect.ismodule(obj):
        return "mod"
    if callable(obj):
        return "func"
    return "data"


def _rst_cell(text: str) -> str:
    return text.replace("|", r"\|")


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", ""]
    for a, b in [header, *rows]:
        lines += [f"   * - {a}", f"     - {b or ' '}"]
    return lines


def _parse(directive: SphinxDirective, lines: list[str], source: str) -> list[nodes.Node]:
    node = nodes.section() if any(set(line) == {"-"} or set(line) == {"~"} for line in lines) else nodes.container()
    nested_parse_with_titles(directive.state, StringList(lines, source=source), node)
    return node.children


class PublicNames(SphinxDirective):
    """``.. public-names:: torchstn.sampling``: the module's ``__all__`` as a linked table.

    With ``:document:``, each name is then documented under ``MODULE.name`` (autodoc),
    in the order of the table.
    """

    required_arguments = 1
    option_spec = {"document": directives.flag}

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        names = getattr(module, "__all__", None)
        if names is None:
            raise self.error(f"{modname} has no __all__")
        names = sorted(names, key=lambda n: (_KIND_ORDER[_role(getattr(module, n))], n.lower()))
        rows, entries = [], []
        for name in names:
            obj = getattr(module, name)
            if name.startswith("__"):
                rows.append((f"``{name}``", _rst_cell(repr(obj))))
                continue
            role = _role(obj)
            summary = _first_line(obj) if role != "data" else _describe_value(obj)
            rows.append((f":{role}:`~{modname}.{name}`", _rst_cell(summary)))
            entries += _AUTODOC[role](f"{modname}.{name}") + [""]
        lines = _table(rows, ("name", "what it is"))
        if "document" in self.options:
            lines += ["", f".. currentmodule:: {modname}", "", *entries]
        return _parse(self, lines, f"<public-names {modname}>")


_KIND_ORDER = {"class": 0, "func": 1, "data": 2, "mod": 3}
_AUTODOC = {
    "class": lambda name: [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:"],
    "func": lambda name: [f".. autofunction:: {name}"],
    "data": lambda name: [f".. autodata:: {name}", "   :no-value:"],
    "mod": lambda name: [f"See :mod:`{name}`."],
}


def _describe_value(obj: object) -> str:
    """A constant's summary: its type and size, or its value when short."""
    text = repr(obj)
    if len(text) <= 60:
        return f"``{text}``"
    size = f" of {len(obj)}" if hasattr(obj, "__len__") else ""
    return f"a ``{type(obj).__name__}``{size}"


class ModelRegistry(SphinxDirective):
    """``.. model-registry::``: every registered model, linked to its builder."""

    def run(self) -> list[nodes.Node]:
        from torchstn.models import get_model_builder, list_models

        rows = []
        for name in list_models():
            builder = get_model_builder(name)
            target = f"{builder.__module__}.{builder.__qualname__}"
            rows.append((f"``{name}`` (:func:`~{target}`)", _rst_cell(_first_line(builder))))
        return _parse(self, _table(rows, ("name (builder)", "what it is")), "<model-registry>")


class Submodules(SphinxDirective):
    """``.. submodules:: torchstn.models``: ``automodule`` of each public submodule (no ``_`` prefix).

    A new paper module of the registry is documented without editing the page.
    """

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
        lines = [line for name in names for line in (f".. automodule:: {package.__name__}.{name}", "")]
        return _parse(self, lines, f"<submodules {package.__name__}>")


class Gallery(SphinxDirective):
    """``.. gallery:: ../examples``: each script's docstring, then its source.

    The directive's content may name scripts in the order to show them; the others follow
    in alphabetical order, so a new script appears without editing the page.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        folder = (Path(self.env.srcdir) / self.arguments[0]).resolve()
        first = [name.strip() for name in self.content if name.strip()]
        missing = [name for name in first if not (folder / name).is_file()]
        if missing:
            raise self.error(f"gallery: no {', '.join(missing)} in {folder}")
        scripts = [folder / name for name in first] + sorted(p for p in folder.glob("*.py") if p.name not in first)
        if not scripts:
            raise self.error(f"no examples in {folder}")
        self.env.torchstn_gallery = getattr(self.env, "torchstn_gallery", set()) | {self.env.docname}
        lines: list[str] = []
        for script in scripts:
            self.env.note_dependency(str(script))
            tree = ast.parse(script.read_text(encoding="utf-8"))
            doc = ast.get_docstring(tree) or ""
            title, _, body = doc.partition("\n")
            title = title.strip().rstrip(".") or script.name
            rel = Path(self.arguments[0]) / script.name
            lines += [title, "-" * len(title), "", body.strip(), "", f"Run it: ``python examples/{script.name}``", ""]
            lines += [f".. literalinclude:: {rel.as_posix()}", "   :language: python"]
            if doc:  # the docstring is above, as text: the listing starts after it
                lines.append(f"   :lines: {tree.body[0].end_lineno + 1}-")
            lines.append("")
        return _parse(self, lines, "<gallery>")


# -- aliases --------------------------------------------------------------------------

def _lookup(path: str) -> Any:
    """The object a dotted torchstn name refers to, or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                # a dataclass field without a class-level default, or an annotated attribute
                if inspect.isclass(obj) and attr == parts[-1] and attr in _annotations(obj):
                    return _Field(obj, attr)
                return None
        return obj
    return None


class _Field:
    """An attribute that only instances have (declared by an annotation)."""

    def __init__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name


def _annotations(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}


def _documented(env: Any) -> dict[int, list[tuple[str, str]]]:
    """id(object) -> [(documented full name, object type)], built once per write phase."""
    cache = getattr(env, "_torchstn_documented", None)
    if cache is None:
        cache = {}
        for fullname, entry in env.get_domain("py").objects.items():
            if not fullname.startswith("torchstn") or entry.aliased:
                continue
            obj = _lookup(fullname)
            if obj is not None:
                cache.setdefault(id(obj), []).append((fullname, entry.objtype))
        env._torchstn_documented = cache
    return cache


def _resolve_alias(app: Sphinx, env: Any, node: nodes.Element, contnode: nodes.Element) -> nodes.Node | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:  # a relative name in a docstring: try the enclosing class, module and its parents
        parts = module.split(".")
        if cls:
            candidates.insert(0, f"{module}.{cls}.{target}")
        candidates[:0] = [".".join(parts[:i] + [target]) for i in range(len(parts), 0, -1)]
    for name in candidates:
        if not name.startswith("torchstn"):
            continue
        obj = _lookup(name)
        if obj is None:
            continue
        last = name.rsplit(".", 1)[-1]
        for fullname, _objtype in _documented(env).get(id(obj), []):
            if fullname.rsplit(".", 1)[-1] != last:
                continue
            py = env.get_domain("py")
            return py.resolve_xref(env, node["refdoc"], app.builder, "obj", fullname, node, contnode)
        # it exists but has no entry (an attribute without a docstring, a module-level alias
        # such as `Merge = Literal[...]`, a helper its package does not export): plain text
        return contnode
    if "." not in target and any(_is_type(vars(m).get(target)) for m in _torchstn_modules()):
        # an annotation naming a type of the function's own module (autodoc does not say which):
        # documented types were linked above through their public name; the rest are plain text
        return contnode
    return None


def _torchstn_modules() -> list[Any]:
    return [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "torchstn" and m is not None]


def _is_type(obj: object) -> bool:
    """A class, or a typing alias such as ``Merge = Literal["concat", "list"]``."""
    return inspect.isclass(obj) or isinstance(obj, (types.GenericAlias, types.UnionType)) or (
        obj is not None and type(obj).__module__ in ("typing", "typing_extensions")
    )


# -- docstring conventions ---------------------------------------------------------

# a star inside a list of names, not emphasis: a shape written bare, `(B, C, *in)` or
# `(B, *size, n)`, or several arguments described at once, `split, seed, **options: ...`
_SHAPE_STAR = re.compile(r"(?:(?<=[(,] )|(?<=\())\*(?=[A-Za-z_]\w*[,)])|(?<=, )\*\*(?=[A-Za-z_]\w*:)")
_CODE = re.compile(r"(``.*?``|`[^`]*`|:math:`[^`]*`)")
# napoleon reads the first line of an attribute, property or constant docstring as `type: text`;
# a type expression: names, dots, brackets, commas, `|` -- a sentence has other spaces
_TYPE_EXPR = re.compile(r"^[\w.~`]+(\[[\w.~`\[\], |]*\])?( \| [\w.~`]+(\[[\w.~`\[\], |]*\])?)*$")


def _escape_shape_stars(line: str) -> str:
    parts = _CODE.split(line)  # odd parts are code or roles: left alone
    return "".join(p if i % 2 else _SHAPE_STAR.sub(lambda m: m[0].replace("*", "\\*"), p) for i, p in enumerate(parts))


_ARGS_HEADER = re.compile(r"(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters):")


def _join_wrapped_names(lines: list[str]) -> list[str]:
    """Join an Args entry whose list of names wraps (``a, b,`` then ``c: text`` below it).

    Napoleon reads an entry's first line alone, so the wrapped names would become the
    description of a parameter named ``a, b,``; an entry line that ends in a comma and has
    no colon cannot be anything else.
    """
    out: list[str] = []
    section = entry = None  # indents of the Args header and of its entries
    pending = ""
    for line in lines:
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if pending:  # the names go on: joined, then read again as an entry line
            line, stripped, indent, pending = f"{pending} {stripped}", f"{pending.strip()} {stripped}", entry, ""
        if _ARGS_HEADER.fullmatch(stripped):
            section, entry = indent, None
        elif section is not None and stripped and indent <= section:
            section = None
        elif section is not None and stripped:
            entry = indent if entry is None else entry
            if indent == entry and stripped.endswith(",") and ":" not in _CODE.sub("", stripped):
                pending = line.rstrip()
                continue
        out.append(line)
    return out + ([pending] if pending else [])


def _before_napoleon(app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]) -> None:
    if what == "data" and "\n".join(lines).strip() == (inspect.getdoc(type(obj)) or "").strip():
        lines[:] = []  # a constant without a doc comment: not the docstring of its type (dict, tuple...)
    owner = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj  # a property, a classmethod
    module = obj.__name__ if inspect.ismodule(obj) else getattr(owner, "__module__", None)
    if not isinstance(module, str) or not module.startswith("torchstn"):  # an attribute: its class's module
        parent = _lookup(name.rpartition(".")[0])
        module = parent.__module__ if inspect.isclass(parent) else name.rpartition(".")[0]
    lines[:] = [_absolute_roles(_escape_shape_stars(line), module) for line in _join_wrapped_names(lines)]
    if what in ("attribute", "property", "data") and lines:
        head, colon, _ = lines[0].partition(":")
        if colon and not _TYPE_EXPR.match(head.strip()):
            app.env._torchstn_keep = (name, list(lines))  # a sentence: napoleon must not split it


def _after_napoleon(app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]) -> None:
    kept = getattr(app.env, "_torchstn_keep", None)
    if kept and kept[0] == name:
        lines[:] = kept[1]
    app.env._torchstn_keep = None


def _env_purge(app: Sphinx, env: Any, docname: str) -> None:
    env._torchstn_documented = None


def _gallery_outdated(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    """A gallery page is read again at every build: a new script is a change of the folder, not of a file."""
    return sorted(getattr(env, "torchstn_gallery", set()))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("public-names", PublicNames)
    app.add_directive("model-registry", ModelRegistry)
    app.add_directive("gallery", Gallery)
    app.add_directive("submodules", Submodules)
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-process-docstring", _before_napoleon, priority=400)
    app.connect("autodoc-process-docstring", _after_napoleon, priority=600)
    app.connect("env-purge-doc", _env_purge)
    app.connect("env-get-outdated", _gallery_outdated)
    app.connect("env-updated", lambda app, env: _env_purge(app, env, ""))
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
