"""The machinery around the learner's modules: caches, data-parallel training, the protocol, the command line.

A notebook uses a few things from here, as black boxes: :func:`train_classifier`
and :func:`train_retrieval` (load a run, or train and cache it),
:func:`untrained_model`, :func:`retrieval_training` (a run at its start, to
train one epoch by hand), :func:`default_settings` (the learning rate and margins
a run uses when none are given: the tuned ones) and :func:`code_version` (to date
committed results). Nothing in the learner's layer imports this
package.

* :mod:`.runs`: load or train, the run cache and checkpoints;
* :mod:`.features`: the frozen trunk's maps, cached;
* :mod:`.cache`: atomic writes and the code version of cache keys;
* :mod:`.distributed`: training under ``torchrun``;
* :mod:`.tuning`: Optuna studies of learning rates and margins;
* :mod:`.protocol`: ``make results``, the tuned multi-seed comparison;
* :mod:`.cli`: ``python -m helpers``;
* :mod:`.finish` and :mod:`.verify`: saving notebooks and ``make verify``.
"""
from .runs import (Run, code_version, default_settings, load_run, retrieval_training, train_classifier, train_retrieval,
                   untrained_model)

__all__ = ["Run", "code_version", "default_settings", "load_run", "retrieval_training", "train_classifier",
           "train_retrieval", "untrained_model"]
