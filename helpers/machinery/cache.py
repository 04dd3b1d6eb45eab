"""What the run and feature caches share: atomic writes, integrity records (manifests) and the version of the code that made an entry.

An entry made by other code must never be loaded, and an entry must not be
thrown away for an edit that cannot change it. :func:`code_version` hashes
the *meaning* of the code that shapes a result: the abstract syntax tree of
each module (or of one function in it), with docstrings removed, so comments,
docstrings and formatting do not count and everything else does.
"""
from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
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


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- writing

WRITE_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit (ulimit -f) is reached",
    errno.EROFS: "the cache folder is read-only (a read-only file system)",
    errno.EACCES: "the cache folder is read-only for this user (permission denied)",
    errno.EPERM: "the cache folder is read-only for this user (operation not permitted)",
}
"""The ``errno`` values that mean the cache cannot be written, and what each means to the user."""
FULL_BELOW = 1 << 20
"""Free bytes below which a failed write is put down to a full disk (torch's writer loses the ``errno``)."""


class CacheWriteError(OSError):
    """A cache file that cannot be written (full disk, read-only or forbidden folder); the message is one line.

    ``errno`` is the cause's (``ENOSPC``, ``EROFS``, ``EACCES``...), so code
    that handles an ``OSError`` by its number still can.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(one_line(message))
        self.errno = code


def write_fault(error: BaseException) -> int | None:
    """The ``errno`` of ``error`` when it is an ``OSError`` that means the cache cannot be written, else ``None``."""
    if isinstance(error, OSError) and error.errno in WRITE_FAULTS:
        return error.errno
    return None


def _diagnosed_fault(temporary: str) -> int | None:
    """Why writing ``temporary`` failed without an ``errno``: the file size limit or a full disk, else ``None``.

    torch's zip writer reports a failed write as a ``RuntimeError`` ("unexpected
    pos ..."); the partial file and the free space still tell the cause.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.path.getsize(temporary) >= limit:
            return errno.EFBIG
    except (ImportError, OSError, ValueError):
        pass
    try:
        disk = os.statvfs(os.path.dirname(temporary) or ".")
    except (AttributeError, OSError):
        return None
    free = disk.f_bfree if os.geteuid() == 0 else disk.f_bavail  # root may use the reserved blocks
    return errno.ENOSPC if free * disk.f_frsize < FULL_BELOW else None


def cannot_write(path, code: int) -> CacheWriteError:
    """The :class:`CacheWriteError` "cannot write <path>: <reason>" for a fault of :data:`WRITE_FAULTS`."""
    return CacheWriteError(f"cannot write {path}: {WRITE_FAULTS[code]}", code)


def _temporary_beside(path: Path) -> str:
    """A new empty temporary file in the folder of ``path``; a folder that cannot take it raises :class:`CacheWriteError`."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        code = write_fault(error)
        if code is None:
            raise
        raise cannot_write(path, code) from None
    os.close(handle)
    return temporary


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    A reader never sees a half-written file, and a failure or a crash leaves
    no partial one: the temporary file is removed. A write the disk or the
    folder refuses (full disk, file size limit, read-only or forbidden
    folder) raises :class:`CacheWriteError`, one line naming ``path`` and
    the reason, and leaves no empty folder: the folder of ``path`` goes too
    if nothing else is in it. Any other failure is raised as it is. The file gets the mode
    the umask allows (``0o666 & ~umask``), not :func:`tempfile.mkstemp`'s
    private 0600, so a shared cache stays readable.
    """
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException as error:
        code = write_fault(error)
        if code is None and isinstance(error, Exception) and not isinstance(error, OSError):
            code = _diagnosed_fault(temporary)
        if os.path.exists(temporary):
            os.remove(temporary)
        if code is None:
            raise
        _remove_if_empty(path.parent)
        raise cannot_write(path, code) from None


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if nothing is in it (a run folder whose first file could not be written)."""
    try:
        os.rmdir(folder)
    except OSError:  # not empty, gone, or not ours to remove
        pass


def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


# --------------------------------------------------------------------------- integrity records

MANIFEST = "manifest.json"
"""The integrity record of a folder entry; a single-file entry ``x.pt`` has ``x.pt.manifest.json`` beside it."""
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class DamagedEntry(Exception):
    """A cache entry whose files do not match their manifest, or cannot be read; the message is one line."""


class DamagedEntryWarning(UserWarning):
    """Issued when a damaged cache entry is moved aside to be made again."""


def one_line(text) -> str:
    """``text`` with its lines joined: every message about a damaged entry fits on one line."""
    return " ".join(str(text).split())


def damaged(file: Path, problem: str) -> DamagedEntry:
    """The :class:`DamagedEntry` naming ``file`` and what is wrong with it."""
    return DamagedEntry(one_line(f"damaged cache file {file}: {problem}"))


def manifest_path(entry: Path) -> Path:
    """Where the manifest of ``entry`` lives: inside a folder, beside a file."""
    entry = Path(entry)
    return entry / MANIFEST if entry.is_dir() else entry.with_name(entry.name + "." + MANIFEST)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(entry: Path, files) -> Path:
    """Atomically write the manifest of ``entry`` (a folder or a file): each file's name, size and SHA-256.

    ``files`` are paths (or names inside the manifest's folder); write it
    last, after every file it lists, so its presence marks the entry complete.
    """
    path = manifest_path(entry)
    records = []
    for file in files:
        file = path.parent / file
        records.append({"name": file.name, "size": file.stat().st_size, "sha256": sha256_of(file)})
    write_text(path, json.dumps({"format": MANIFEST_FORMAT, "files": records}, indent=2) + "\n")
    return path


def _read_manifest(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["files"]
        return [{"name": str(r["name"]), "size": int(r["size"]), "sha256": str(r["sha256"])} for r in records]
    except FileNotFoundError:
        raise damaged(path, "manifest missing") from None
    except Exception as error:  # noqa: BLE001 - any fault of the record is the same fault
        raise damaged(path, f"manifest unreadable ({type(error).__name__}: {error})") from None


def check_entry(entry: Path, hashes: bool = True, expected=None) -> list[str]:
    """Check ``entry`` against its manifest: sizes always, SHA-256 with ``hashes``; return the names it lists.

    Raises :class:`DamagedEntry` (one line naming the file and the fault) when
    the manifest is missing or unreadable, does not list exactly ``expected``
    (when given), or a file is missing, has another size or other content.
    """
    path = manifest_path(entry)
    records = _read_manifest(path)
    names = [r["name"] for r in records]
    if expected is not None and sorted(names) != sorted(expected):
        raise damaged(path, f"manifest lists {names} instead of {list(expected)}")
    for record in records:
        file = path.parent / record["name"]
        if not file.is_file():
            raise damaged(file, "missing")
        size = file.stat().st_size
        if size != record["size"]:
            raise damaged(file, f"size {size} bytes instead of {record['size']}")
        if hashes and sha256_of(file) != record["sha256"]:
            raise damaged(file, "content hash differs from its manifest")
    return names


def parsed(file: Path, read: Callable):
    """``read(file)``, any failure of it turned into a one-line :class:`DamagedEntry` naming ``file``."""
    try:
        return read(file)
    except Exception as error:  # noqa: BLE001 - torch, pandas and json fail in many ways
        raise damaged(file, f"unreadable ({type(error).__name__}: {error})") from None


def move_aside(entry: Path) -> Path:
    """Rename a damaged entry (and a file's manifest) to ``<name>.damaged-<UTC time>``; nothing is deleted.

    A folder that refuses the rename (read-only, forbidden) raises
    :class:`CacheWriteError`, one line naming ``entry``.
    """
    entry = Path(entry)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = entry.with_name(f"{entry.name}.damaged-{stamp}")
    sidecar = manifest_path(entry)
    try:
        if entry.exists():
            os.replace(entry, target)
        if not entry.is_dir() and sidecar.parent == entry.parent and sidecar.exists():
            os.replace(sidecar, target.with_name(target.name + "." + MANIFEST))
    except OSError as error:
        code = write_fault(error)
        if code is None:
            raise
        raise CacheWriteError(f"cannot move {entry} aside: {WRITE_FAULTS[code]}", code) from None
    return target


def set_aside(entry: Path, error: Exception) -> Path:
    """Warn in one line that ``entry`` is damaged, and :func:`move_aside` it so it is made again.

    Where it cannot be moved (a read-only cache), raises :class:`DamagedEntry`:
    one line saying what is damaged and why it cannot be made again.
    """
    try:
        target = move_aside(entry)
    except CacheWriteError as fault:
        raise DamagedEntry(one_line(f"{error}; it cannot be made again: {fault}")) from None
    warnings.warn(one_line(f"{error}; moved aside to {target.name}, making it again"), DamagedEntryWarning,
                  stacklevel=3)
    return target
