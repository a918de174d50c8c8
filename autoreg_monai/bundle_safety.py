# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Checks a bundle passes before any of it runs: config code, weights and file hashes.

MONAI's config parser evaluates every ``"$..."`` string with Python's ``eval`` (``exec`` for imports) and
instantiates every ``"_target_"`` by its dotted path, so a bundle's JSON is code. A bundle from another
site is checked statically before its configs are parsed:

- every ``$`` expression is parsed (never run) and may use only: ``@`` references, literals, operators,
  lambdas and comprehensions, a few builtins (:data:`SAFE_BUILTINS`), and names inside the allowed
  packages :data:`ALLOWED_PACKAGES` (resolved by attribute lookup, so ``torch.os`` is not ``torch``),
  minus the code-loading entry points of :data:`DENIED_NAMES`, plus the few names of
  :data:`EXTRA_ALLOWED_NAMES`; attributes starting with ``_`` and those of :data:`DENIED_ATTRIBUTES`
  are refused anywhere (``@net.__class__...``);
- every ``_target_`` is a MONAI component name or a dotted path passing the same test;
- ``%`` macros name files inside the bundle; ``"_mode_": "debug"`` (which starts pdb) is refused;
- ``models/*.pt`` load with ``torch.load(weights_only=True)``, which refuses pickled code;
- a fetched bundle's files match its ``SHA256SUMS``.

The check is a static filter, not a sandbox: docs/security.md states what it does not cover.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from autoreg_monai.packaging import MANIFEST, sha256_of

__all__ = [
    "ALLOWED_IMPORTS",
    "ALLOWED_PACKAGES",
    "DENIED_ATTRIBUTES",
    "DENIED_NAMES",
    "EXTRA_ALLOWED_NAMES",
    "SAFE_BUILTINS",
    "check_bundle",
    "config_problems",
    "expression_problems",
    "links_outside",
    "name_problem",
    "verify_manifest",
    "weights_problem",
]

ALLOWED_PACKAGES = ("autoreg_monai", "monai", "torch")
"""Packages whose names a bundle config may use (through ``$`` expressions and ``_target_``)."""

EXTRA_ALLOWED_NAMES = frozenset(
    {
        "os.path.join",
        "os.path.dirname",
        "os.path.basename",
        "os.path.exists",
        "os.isatty",
        "numpy.float32",
        "numpy.float64",
        "numpy.int16",
        "numpy.int32",
        "numpy.int64",
        "numpy.uint8",
        "numpy.uint16",
        "ignite.contrib.handlers.ProgressBar",
        "ignite.handlers.ProgressBar",
    }
)
"""Names outside :data:`ALLOWED_PACKAGES` that MONAI bundles commonly use and that run no code of the bundle."""

ALLOWED_IMPORTS = frozenset({"autoreg_monai", "monai", "torch", "numpy", "os", "ignite"})
"""Modules a config may import (``"$import os"``); what it then uses of them is checked by name."""

SAFE_BUILTINS = frozenset(
    {
        "None", "True", "False", "len", "min", "max", "sum", "abs", "round", "int", "float", "str", "bool",
        "list", "tuple", "dict", "set", "range", "sorted", "zip", "enumerate", "isinstance",
    }
)  # fmt: skip
"""Builtins an expression may call."""

DENIED_NAMES = (
    "torch.load",
    "torch.hub",
    "torch.jit.load",
    "torch.package",
    "torch.serialization",
    "torch.utils.cpp_extension",
    "torch.ops",
    "torch.classes",
    "torch.distributed.rpc",
    "torch.multiprocessing",
    "monai.utils.optional_import",
    "monai.utils.module",
    "monai.utils.instantiate",
    "monai.utils.locate",
    "monai.bundle",
    "monai.apps",
)
"""Names inside the allowed packages that load code or configs, and are refused with everything below them."""

DENIED_ATTRIBUTES = frozenset(
    {
        "os", "sys", "subprocess", "builtins", "importlib", "shutil", "pickle", "system", "popen", "spawn",
        "exec", "eval", "compile", "load", "loads", "open", "remove", "unlink", "rmtree", "import_module",
    }
)  # fmt: skip
"""Attribute names refused on any object (a reference's value is not known before the config runs)."""

_ALIASES = {"np": "numpy"}  # MONAI's parser pre-imports numpy as ``np``
_REFERENCE = re.compile(r"@[\w#]+")  # MONAI's reference syntax inside expressions
_REF_NAME = "__bundle_reference__"
_NODES = (
    ast.Module, ast.Expression, ast.Expr, ast.Import, ast.ImportFrom, ast.alias, ast.Constant, ast.Name,
    ast.Attribute, ast.Call, ast.keyword, ast.Starred, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.IfExp, ast.Subscript, ast.Slice, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp,
    ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Lambda, ast.arguments, ast.arg, ast.JoinedStr,
    ast.FormattedValue, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context,
)  # fmt: skip


def _in_packages(module_name: str, packages: tuple[str, ...]) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in packages)


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a chain of attributes on a name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(_ALIASES.get(node.id, node.id))
    return ".".join(reversed(parts))


def name_problem(dotted: str) -> str | None:
    """Why ``dotted`` (``package.attr...``) may not be used by a bundle config, or ``None`` if it may."""
    if dotted in EXTRA_ALLOWED_NAMES:
        return None
    if not _in_packages(dotted, ALLOWED_PACKAGES):
        return f"{dotted} is outside the allowed packages ({', '.join(ALLOWED_PACKAGES)})"
    if any(_in_packages(dotted, (denied,)) for denied in DENIED_NAMES):
        return f"{dotted} loads code or configs (denied)"
    parts = dotted.split(".")
    if any(part.startswith("_") for part in parts):
        return f"{dotted} uses a private name"
    try:
        value: Any = importlib.import_module(parts[0])
        for depth, part in enumerate(parts[1:], start=2):
            try:
                value = getattr(value, part)
            except AttributeError:
                value = importlib.import_module(".".join(parts[:depth]))  # a submodule not yet imported
            if isinstance(value, types.ModuleType) and not _in_packages(value.__name__, ALLOWED_PACKAGES):
                return f"{'.'.join(parts[:depth])} is the module {value.__name__}, outside the allowed packages"
    except (ImportError, AttributeError):
        return f"{dotted} does not exist"
    home = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    home = home if isinstance(home, str) else type(value).__module__
    if home != "builtins" and not _in_packages(home, ALLOWED_PACKAGES):
        return f"{dotted} is defined in {home}, outside the allowed packages"
    return None


def expression_problems(expression: str) -> list[str]:
    """Why a ``$`` expression (without its ``$``) may not run, as a list (empty when it passes)."""
    source = _REFERENCE.sub(_REF_NAME, expression)
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as error:
        return [f"not a Python expression ({error.msg})"]
    local_names = {a.arg for node in ast.walk(tree) if isinstance(node, ast.Lambda) for a in node.args.args}
    local_names |= {
        n.id for node in ast.walk(tree) if isinstance(node, ast.comprehension) for n in ast.walk(node.target)
        if isinstance(n, ast.Name)
    }  # fmt: skip
    problems: list[str] = []
    chains: set[int] = set()  # attribute nodes already judged as part of a dotted name
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            problems.append(f"{type(node).__name__} is not allowed")
        elif isinstance(node, ast.Import):
            problems += [f"import of {a.name}" for a in node.names if a.name.split(".")[0] not in ALLOWED_IMPORTS]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] not in ALLOWED_IMPORTS or node.level:
                problems.append(f"import from {node.module}")
            else:
                problems += [p for a in node.names if (p := name_problem(f"{node.module}.{a.name}"))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in chains:
            dotted = _dotted(node)
            current: ast.AST = node
            while isinstance(current, ast.Attribute):  # the inner links of this chain are judged with it
                chains.add(id(current))
                if current.attr.startswith("_") or current.attr in DENIED_ATTRIBUTES:
                    problems.append(f"attribute {current.attr} is not allowed")
                current = current.value
            root = current.id if isinstance(current, ast.Name) else None
            if dotted is not None and root not in local_names and root != _REF_NAME:
                problems += [p for p in [name_problem(dotted)] if p]
            if root is not None:
                chains.add(id(current))
        elif isinstance(node, ast.Name) and id(node) not in chains:
            if node.id in local_names or node.id == _REF_NAME or node.id in SAFE_BUILTINS:
                continue
            if node.id in ALLOWED_PACKAGES:
                continue
            kind = "builtin" if hasattr(builtins, node.id) else "name"
            problems.append(f"{kind} {node.id} is not allowed")
    return sorted(set(problems))


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """``(id path, key, value)`` of every item of a config, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}#{key}" if path else str(key), str(key), item
            yield from _walk(item, f"{path}#{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield f"{path}#{index}" if path else str(index), str(index), item
            yield from _walk(item, f"{path}#{index}" if path else str(index))


def _target_problem(target: str) -> str | None:
    if "." in target:
        return name_problem(target)
    from monai.bundle.config_item import ComponentLocator  # scans all of MONAI: imported only when needed

    if ComponentLocator().get_component_module_name(target) is None:
        return f"{target} is not a MONAI component"
    return None


def config_problems(config_file: str | Path, bundle: str | Path) -> list[str]:
    """What in one config file of ``bundle`` would run code outside the allow lists, one line per item."""
    config_file, bundle = Path(config_file), Path(bundle).resolve()
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"{config_file}: not a readable JSON config ({error})"]
    problems = []
    for path, key, value in _walk(config, ""):
        if not isinstance(value, str):
            continue
        found: list[str] = []
        if key == "_target_":
            found += [p for p in [_target_problem(value)] if p]
        elif key == "_mode_" and value == "debug":
            found.append("debug mode starts the Python debugger")
        elif value.startswith("$"):
            found += expression_problems(value[1:])
        elif value.startswith("%"):
            macro_file = value[1:].partition("#")[0]
            if macro_file and not (bundle.parent.parent / macro_file).resolve().is_relative_to(bundle):
                found.append(f"the macro names {macro_file}, a file outside the bundle")
        problems += [f"{config_file}: {path}: {p} (in {value[:80]!r})" for p in found]
    return problems


def verify_manifest(bundle: str | Path) -> None:
    """Check the files of a fetched bundle against its ``SHA256SUMS`` (nothing to check without one).

    Raises:
        ValueError: naming the file that is missing or whose SHA-256 differs.
    """
    bundle = Path(bundle)
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        return
    for line in manifest.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        path = bundle / relative
        if not path.is_file():
            raise ValueError(f"{path}: listed in {manifest} but missing; fetch the bundle again")
        if sha256_of(path) != digest:
            raise ValueError(f"{path}: changed since the bundle was fetched (SHA-256 differs from {manifest})")


def weights_problem(path: str | Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` refuses a weights file, or ``None`` when it loads."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for pickled objects; RuntimeError/EOFError for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in str(error):
            return f"it holds pickled Python objects, not only weights; refused without running them ({first})"
        return f"not a readable weights file ({type(error).__name__}: {first})"
    return None


def links_outside(bundle: str | Path) -> list[Path]:
    """Symbolic links in a bundle folder (at any depth) that lead outside it, or nowhere.

    A bundle inside a ``bundles/`` folder may link to files of that folder (the repository's bundles share
    ``bundles/multi_gpu/`` overlays that way); nothing further out.
    """
    bundle = Path(bundle)
    root = (bundle.parent if bundle.parent.name == "bundles" else bundle).resolve()
    found = []
    for folder, subfolders, files in os.walk(bundle):
        for name in sorted(subfolders + files):
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                found.append(path)
    return sorted(found)


def check_bundle(bundle: str | Path, trust: bool = False, limit: int = 5) -> None:
    """Refuse a bundle whose configs would run code outside the allow lists, or whose weights hold pickled code.

    Args:
        bundle: the bundle folder (``.../bundles/<name>``).
        trust: skip the config check (``--trust-bundle``); hashes and weights are checked in any case.
        limit: how many config problems the error lists.

    Raises:
        ValueError: naming the file and the problem.
    """
    bundle = Path(bundle)
    if not trust:
        outside = links_outside(bundle)
        if outside:
            raise ValueError(
                f"{outside[0]}: refused, a link to {outside[0].resolve()}, outside the bundle {bundle}"
                + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                + "; copy the file into the bundle, or pass --trust-bundle for a bundle of your own"
            )
    verify_manifest(bundle)
    for weights in sorted((bundle / "models").glob("*.pt")):
        problem = weights_problem(weights)
        if problem:
            raise ValueError(f"{weights}: {problem}")
    if trust:
        return
    problems = [p for config in sorted((bundle / "configs").glob("*.json")) for p in config_problems(config, bundle)]
    if problems:
        shown = "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
        raise ValueError(
            f"{bundle}: refused, its configs would run code outside the allowed packages "
            f"({', '.join(ALLOWED_PACKAGES)}): {shown}. Pass --trust-bundle only if you trust where it came from"
        )
