"""``make verify``: re-execute the notebooks in a temporary folder and diff their text outputs with the committed ones.

Usage: ``python -m helpers.machinery.verify [--cache DIR] [--keep DIR] [--tolerance T] notebooks/*.ipynb``

Each notebook is copied into a temporary folder, executed there with
nbconvert at the active profile (``FIREARM_PROFILE``), its progress bars
collapsed as ``make run`` does (:func:`.finish.finalize`), and the
text of every cell's outputs (streams, ``text/plain``, ``text/markdown``,
errors) compared with the committed notebook. Figures are not
compared (their bytes depend on the fonts); their captions and tables are.

What legitimately changes from run to run is masked before comparing
(:func:`normalise`): durations (``12.3 s``, ``4 min``, ``83 ms``), rates
(``it/s``), memory sizes, the ``from cache`` flags and remarks, and progress
bars, which are printed only when the work runs rather than loads from the
cache. A cell tagged ``verify-skip`` in its metadata (timing benchmarks)
is left out, and the report says so.

Another processor rounds differently, so a notebook re-executed there can
legitimately move a measured number (an mAP in its 2nd or 3rd decimal)
while every verdict stays the same. A cell whose text is not identical is
therefore compared number by number (:func:`agree_within`):

* the text is split into numbers and the rest (:func:`split_numbers`). A
  number is an integer or decimal, signed or not, optionally in scientific
  notation or followed by ``%``, standing alone: ``0.583``, ``-0.009``,
  ``+38.1%``, ``3.86e-07``, and the numbers of ``0.583 ± 0.012`` and
  ``[+0.010, +0.030]``; not the digits inside a word, a hash or a version
  (``lite0``, ``dcba6fb85a45``, ``2.14.1``, ``792x273.6``);
* the rest must be identical, except that a run of spaces compares as one
  space (pandas pads a column to its widest value): every verdict word
  (``holds``, ``reversed``, ``not resolved``, ``BEYOND TOLERANCE``) and
  the layout must match exactly, and so must the count of numbers;
* a number with a decimal point or an exponent may move by at most the
  tolerance (absolute); a percentage (``52.6%``, ``98%``) is compared on
  the 0-1 scale, its difference divided by 100;
* any other number, written without a decimal point (a count, an index,
  ``3/5`` seeds ahead), must be equal, with one exception: in a cell whose
  committed text contains one of :data:`VARYING_WHOLE_CONTEXTS` (``epochs
  trained``, ``best epoch``, ``kept epoch``, ``iterations``, ``confused
  with``), the whole numbers written ``13`` or ``13.0`` may differ. Early
  stopping keeps another epoch when validation moves, which changes the
  epochs trained, the iterations and the kept epoch; and a retrained model
  confuses a category pair a different number of times.

A cell that passes is reported as agreeing within the tolerance, with its
largest numeric difference, and is not a failure; any other difference is,
with a unified diff. ``--tolerance`` defaults to the committed tolerance of
the active profile's results (:func:`default_tolerance`: one run's test mAP,
:func:`helpers.report.tolerance`), or 0 (exact comparison) with a note when
its ``results/`` tables are missing or incomplete.

By default the notebooks run with an **empty** run cache (``--cache``
defaults to a new temporary folder), so every model is trained again from
scratch: the check that a fresh clone reproduces the committed numbers.
Figures are written to the temporary folder, not to ``figures/``. The
report ends with the counts of identical cells, cells within the tolerance
and cells that differ; exit status 1 when any cell differs beyond the
tolerance (or the notebooks' cells differ in number or kind).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import config, report
from .finish import finalize

SKIP_TAG = "verify-skip"
"""The cell tag that leaves a cell out of the comparison (its outputs are measured timings)."""
_MASKS = [  # a unit follows on the same line: " ?", not "\s?", which masked "1.21\nmin" of a describe() table
    (re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)? ?(?:s/it|it/s|batch/s|s/batch|run/s|s/run|epoch/s|s/epoch)"), "<rate>"),
    (re.compile(r"\[\d+:\d+(?::\d+)?(?:<[\d:?]+)?(?:,[^\]]*)?\]"), "[<elapsed>]"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|µs|us|s|sec|seconds|min|minutes|h)\b"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:[KMGT]i?B)\b"), "<size>"),
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


VARYING_WHOLE_CONTEXTS = ("epochs trained", "best epoch", "kept epoch", "iterations", "confused with")
"""In a cell whose text contains one of these, whole numbers (``13``, ``13.0``) may differ across machines."""
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?!\.?\w)")
"""A number standing alone: not the digits of a word, hash or version (``lite0``, ``2.14.1``, ``792x273.6``)."""
_WHOLE = re.compile(r"[-+−]?\d+(?:\.0)?")
_SPACES = re.compile(r"[ \t]+")


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``(the text between the numbers, the numbers)``: the first has one item more; runs of spaces become one."""
    return [_SPACES.sub(" ", part) for part in _NUMBER.split(text)], _NUMBER.findall(text)


def _value(number: str) -> float:
    value = float(number.rstrip("%").replace("−", "-"))
    return value / 100 if number.endswith("%") else value


def numeric_gap(before: str, after: str) -> float | None:
    """The largest difference between the measured numbers of two texts; ``None`` when anything else differs.

    ``None`` when the text between the numbers differs (runs of spaces
    aside), the count of numbers differs, or a number without a decimal
    point or exponent differs (except the whole numbers of a cell that
    mentions one of :data:`VARYING_WHOLE_CONTEXTS`). Measured numbers are
    those with a decimal point, an exponent or a ``%`` (percentages on the
    0-1 scale); 0.0 when there are none. The rules are the module's.
    """
    (words_a, numbers_a), (words_b, numbers_b) = split_numbers(before), split_numbers(after)
    if words_a != words_b or len(numbers_a) != len(numbers_b):
        return None
    varying_whole = any(context in before for context in VARYING_WHOLE_CONTEXTS)
    gap = 0.0
    for a, b in zip(numbers_a, numbers_b):
        if varying_whole and _WHOLE.fullmatch(a) and _WHOLE.fullmatch(b):
            continue
        if any(mark in a + b for mark in ".eE%"):
            gap = max(gap, abs(_value(a) - _value(b)))
        elif _value(a) != _value(b):
            return None
    return gap


def agree_within(before: str, after: str, tolerance: float) -> bool:
    """Whether two normalised texts agree but for measured numbers that move by at most ``tolerance``.

    The text between the numbers (verdicts, labels, layout) must be
    identical and the integers equal; see :func:`numeric_gap` and the
    module's docstring for the rules.
    """
    gap = numeric_gap(before, after)
    return gap is not None and gap <= tolerance + 1e-12


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


class Comparison(list):
    """What :func:`compare` found: a list of the failures (unified diffs), as before the tolerance.

    ``within`` lists the cells that agree within the tolerance (with their
    largest numeric difference); ``identical`` counts the compared cells
    whose text is identical.
    """

    def __init__(self, failures=(), within=(), identical: int = 0):
        super().__init__(failures)
        self.within, self.identical = list(within), identical


def compare(committed: Path, fresh: Path, tolerance: float = 0.0) -> Comparison:
    """The cells whose text differs beyond ``tolerance`` (unified diffs), and those that agree within it.

    A cell whose normalised text is not identical but passes
    :func:`agree_within` goes to ``within``, not to the failures; with
    ``tolerance`` 0 only cells whose numbers are equal in value (``0.50``
    and ``0.5``) or whose whole numbers may vary (epochs) do.
    """
    old, new = cell_texts(committed), cell_texts(fresh)
    if [c[0] for c in old] != [c[0] for c in new]:
        return Comparison([f"{committed.name}: the cells differ in number or kind"])
    failures, within, identical = [], [], 0
    for (number, before, skipped), (_, after, _) in zip(old, new):
        if skipped:
            continue
        if before == after:
            identical += 1
        elif agree_within(before, after, tolerance):
            within.append(f"{committed.name}, cell {number}: agrees within the tolerance "
                          f"(largest difference {numeric_gap(before, after):.4g})")
        else:
            diff = difflib.unified_diff(before.splitlines(), after.splitlines(), "committed", "re-executed",
                                        lineterm="", n=1)
            failures.append(f"{committed.name}, cell {number}:\n" + "\n".join(diff))
    return Comparison(failures, within, identical)


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


def default_tolerance() -> tuple[float, str]:
    """``(tolerance, where it comes from)``: the committed tolerance of one run's test mAP at the active profile.

    :func:`helpers.report.tolerance` of the profile's committed comparison
    table; 0.0 (an exact comparison) when its ``results/`` tables are
    missing or incomplete, or give no finite tolerance.
    """
    profile = config.active_profile()
    try:
        value = report.tolerance(report.read_results(profile)["comparison"])
    except (FileNotFoundError, KeyError, ValueError) as error:
        return 0.0, f"no committed results for the {profile.name} profile ({error}); numbers compared exactly"
    if not math.isfinite(value):
        return 0.0, f"the {profile.name} profile's results give no finite tolerance; numbers compared exactly"
    return value, f"the committed tolerance of one run's test mAP at the {profile.name} profile"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, default=None,
                        help="run cache to execute with (default: a new, empty temporary folder)")
    parser.add_argument("--keep", type=Path, default=None, help="also keep the executed copies in this folder")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="how far a measured number may move (default: the active profile's committed "
                             "tolerance of one run's test mAP, or 0 when its results are unavailable)")
    args = parser.parse_args(argv)
    tolerance, source = (args.tolerance, "--tolerance") if args.tolerance is not None else default_tolerance()
    print(f"tolerance {tolerance:.4g} ({source})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="verify-"))
    cache = args.cache or work / "cache"
    failures, within, identical, skipped = [], [], 0, 0
    for path in args.notebooks:
        fresh = execute(path, work, cache)
        skipped += sum(s for _, _, s in cell_texts(path))
        result = compare(path, fresh, tolerance)
        print(f"{path.name}: {result.identical} identical, {len(result.within)} within the tolerance, "
              f"{len(result)} differ", flush=True)
        failures.extend(result)
        within.extend(result.within)
        identical += result.identical
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(fresh, args.keep / path.name)
    print(f"\n{len(args.notebooks)} notebooks re-executed with the run cache {cache}; {skipped} timing cell(s) "
          f"tagged '{SKIP_TAG}' not compared")
    for line in within:
        print(line)
    for failure in failures:
        print("\n" + failure)
    print(f"\n{identical} cell(s) identical; {len(within)} cell(s) within the tolerance {tolerance:.4g} "
          f"(legitimate cross-machine differences); {len(failures)} cell(s) differ (failures)")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
