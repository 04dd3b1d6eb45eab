"""Reusable code for the DeepFirearm metric-learning tutorial series.

Two layers. **The learner's layer** is what the notebooks teach from, one
concept per module, in the order data flows: ``config`` (profiles), ``layout``
and ``synthetic`` (the release), ``data``, ``methods`` and ``losses``,
``models`` and ``imagenet``, ``train`` (the loop), ``evaluation``, ``metrics``,
``stats`` and ``search``, ``loss_analysis``, ``report``, ``plots`` and
``notebook``. **The machinery** (:mod:`helpers.machinery`) wraps it from
outside: the run and feature caches, data-parallel training, the protocol of
``make results``, the command line and notebook checks. The learner's layer
never imports it. Import what you need, e.g. ``from helpers import data, losses``.
"""
__version__ = "0.1.0"
