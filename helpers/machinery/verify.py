"""``make verify``: re-execute the notebooks in a temporary folder and diff their text outputs with the committed ones.

Usage: ``python -m helpers.machinery.verify [--cache DIR] [--keep DIR] notebooks/*.ipynb``

Each notebook is copied into a temporary folder, executed there with
nbconvert at the active profile (``FIREARM_PROFILE``), its progress bars
collapsed as ``make run`` does (:func:`.finish.finalize`), and the
text of every cell's outputs (streams, ``text/plain``, ``text/markdown``,
errors) compared line by line with the committed notebook. Figures are not
compared (their bytes depend on the fonts); their captions and tables are.

What legitimately changes from run to run is masked before comparing
(:func:`normalise`): durations (``12.3 s``, ``4 min``, ``83 ms``), rates
(``it/s``), memory sizes, the ``from cache`` flags and remarks, and progress
bars, which are printed only when the work runs rather than loads from the
cache. A cell tagged ``verify-skip`` in its metadata (timing benchmarks)
is left out, and the report says so.

By default the notebooks run with an **empty** run cache (``--cache``
defaults to a new temporary folder), so every model is trained again from
scratch: the check that a fresh clone reproduces the committed numbers.
Figures are written to the temporary folder, not to ``figures/``. Exit
status 1 when any text differs.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import config
from .finish import finalize

SKIP_TAG = "verify-skip"
"""The cell tag that leaves a cell out of the comparison (its outputs are measured timings)."""
_MASKS = [
    (re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?\s?(?:s/it|it/s|batch/s|s/batch|run/s|s/run|epoch/s|s/epoch)"), "<rate>"),
    (re.compile(r"\[\d+:\d+(?::\d+)?(?:<[\d:?]+)?(?:,[^\]]*)?\]"), "[<elapsed>]"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|s|sec|seconds|min|minutes|h)\b"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:[KMGT]i?B)\b"), "<size>"),
    (re.compile(r"\b(?:True|False)\b"), "<bool>"),
]


_PROGRESS_LINE = re.compile(r"\d+%\|")
"""A progress bar's line (``epoch 3:  60%|###   | 6/10 [...]``): present only when the work ran, not when cached."""


def normalise(text: str) -> str:
    """``text`` without progress-bar lines and cache remarks, durations, rates, sizes and booleans masked."""
    text = text.replace(" (loaded from cache)", "")
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.splitlines() if not _PROGRESS_LINE.search(line) and line.strip())


def _output_text(output: dict) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return "".join(output.get("text", ""))
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}"
    data = output.get("data", {})
    for mime in ("text/markdown", "text/plain"):
        if mime in data:
            value = data[mime]
            return "".join(value) if isinstance(value, list) else value
    return ""


def cell_texts(path: Path) -> list[tuple[int, str, bool]]:
    """``(cell number, normalised text of its outputs, skipped)`` for every code cell of a notebook."""
    book = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for number, cell in enumerate(book["cells"]):
        if cell["cell_type"] != "code":
            continue
        text = "\n".join(_output_text(o) for o in cell.get("outputs", []))
        cells.append((number, normalise(text), SKIP_TAG in cell.get("metadata", {}).get("tags", [])))
    return cells


def compare(committed: Path, fresh: Path) -> list[str]:
    """Unified diffs of the cells whose text differs (empty when the notebooks agree)."""
    report = []
    old, new = cell_texts(committed), cell_texts(fresh)
    if [c[0] for c in old] != [c[0] for c in new]:
        return [f"{committed.name}: the cells differ in number or kind"]
    for (number, before, skipped), (_, after, _) in zip(old, new):
        if skipped or before == after:
            continue
        diff = difflib.unified_diff(before.splitlines(), after.splitlines(), "committed", "re-executed",
                                    lineterm="", n=1)
        report.append(f"{committed.name}, cell {number}:\n" + "\n".join(diff))
    return report


def execute(path: Path, folder: Path, cache: Path) -> Path:
    """Execute a copy of ``path`` inside ``folder`` (run cache ``cache``) and collapse its progress bars."""
    copy = folder / path.name
    shutil.copy(path, copy)
    env = {**os.environ, config.CACHE_ENV: str(cache), config.FIGURES_ENV: str(folder / "figures"),
           "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    "--ExecutePreprocessor.timeout=3600", str(copy)], check=True, env=env,
                   cwd=path.resolve().parent)
    finalize(copy)
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, default=None,
                        help="run cache to execute with (default: a new, empty temporary folder)")
    parser.add_argument("--keep", type=Path, default=None, help="also keep the executed copies in this folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="verify-"))
    cache = args.cache or work / "cache"
    failures, skipped = [], 0
    for path in args.notebooks:
        fresh = execute(path, work, cache)
        skipped += sum(s for _, _, s in cell_texts(path))
        differences = compare(path, fresh)
        print(f"{path.name}: {'identical text outputs' if not differences else f'{len(differences)} cell(s) differ'}",
              flush=True)
        failures.extend(differences)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(fresh, args.keep / path.name)
    print(f"\n{len(args.notebooks)} notebooks re-executed with the run cache {cache}; {skipped} timing cell(s) "
          f"tagged '{SKIP_TAG}' not compared")
    for failure in failures:
        print("\n" + failure)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
