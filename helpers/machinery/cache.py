"""What the run and feature caches share: atomic writes and the version of the code that made an entry.

An entry made by other code must never be loaded, and an entry must not be
thrown away for an edit that cannot change it. :func:`code_version` hashes
the *meaning* of the code that shapes a result: the abstract syntax tree of
each module (or of one function in it), with docstrings removed, so comments,
docstrings and formatting do not count and everything else does.
"""
from __future__ import annotations

import ast
import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

PACKAGE = Path(__file__).resolve().parents[1]
"""The ``helpers`` package folder: module names below are relative to it."""


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _definition(tree: ast.Module, name: str) -> ast.AST:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise ValueError(f"no top-level function or class {name!r}")


def source_meaning(source: str, definition: str | None = None) -> str:
    """A canonical text of Python ``source`` (or of one top-level ``definition`` in it) without docstrings or comments.

    Two sources with the same meaning give the same text: ``ast.dump`` of the
    parsed tree (comments and layout never reach it) with every docstring
    removed.
    """
    tree = _without_docstrings(ast.parse(source))
    return ast.dump(_definition(tree, definition) if definition else tree)


def digest_of_sources(sources: dict[str, str]) -> str:
    """SHA-1 (12 hex digits) of named sources' meanings; keys are ``"module"`` or ``"module:definition"``."""
    digest = hashlib.sha1()
    for name in sorted(sources):
        definition = name.split(":", 1)[1] if ":" in name else None
        digest.update(name.encode("utf-8"))
        digest.update(source_meaning(sources[name], definition).encode("utf-8"))
    return digest.hexdigest()[:12]


@lru_cache(maxsize=None)
def code_version(names: tuple[str, ...]) -> str:
    """:func:`digest_of_sources` of modules of ``helpers`` named like ``"metrics"``,
    ``"machinery.runs"`` or ``"config:seed_everything"`` (one function of a module)."""
    sources = {}
    for name in names:
        module = name.split(":", 1)[0]
        sources[name] = (PACKAGE / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    return digest_of_sources(sources)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    A reader never sees a half-written file, and a crash leaves no partial one.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)
