"""Progress bars that update live and keep their final line in a saved notebook.

Every long loop in ``helpers`` shows a text bar (tqdm's standard class, on
standard output), redrawn at most every :data:`MIN_INTERVAL` seconds. In
JupyterLab it updates in place. A notebook saved after a headless run keeps
the bar's redraws in its output; :func:`helpers.machinery.finish.finalize` (run by
``make run``) then keeps only the last state of each line, so the committed
notebook shows every bar finished, with its count and elapsed time. Widget
bars (``tqdm.auto``) cannot do that: a saved notebook holds their first frame.
"""
from __future__ import annotations

import sys

from tqdm.std import tqdm

MIN_INTERVAL = 2.0
"""Seconds between two redraws of a bar (fewer redraws, smaller saved outputs)."""


def bar(iterable=None, **kwargs) -> tqdm:
    """A ``tqdm`` text bar on standard output; keyword arguments go to tqdm (``desc``, ``total``, ``disable``...)."""
    kwargs.setdefault("mininterval", MIN_INTERVAL)
    kwargs.setdefault("file", sys.stdout)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)
