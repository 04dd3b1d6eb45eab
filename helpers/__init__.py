"""Reusable code for the DeepFirearm metric-learning tutorial series.

One concept per module, in the order data flows: ``config`` (profiles),
``layout`` and ``synthetic`` (the release), ``data``, ``methods`` and
``losses``, ``models`` and ``imagenet``, ``runs`` and ``train``,
``evaluation``, ``metrics`` and ``search``, ``loss_analysis``, ``plots`` and
``notebook``. The README's layout section says what each holds. Import what
you need, e.g. ``from helpers import data, losses``.
"""
__version__ = "0.1.0"
