"""Reusable code for the DeepFirearm metric-learning tutorial series.

One module per responsibility: ``config``, ``data`` (with the synthetic
renderer in ``synthetic``), ``losses``, ``models``, ``train``, ``metrics``
and ``plots``. Import what you need, e.g. ``from helpers import data, losses``.
"""
__version__ = "0.1.0"
