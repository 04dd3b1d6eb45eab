"""Retrieval metrics on embeddings or ranked ids: AP, mAP, Recall@K, the PCA sweep, distance pairs.

Every query is ranked against the
database by cosine similarity (embeddings are L2-normalised again here, in
case they were not). ``ground_truth`` is a list with one integer array per
query holding the positions in the database of its relevant items.

Two flavours of average precision are offered; every table says which one it
uses:

* ``mode="trapezoid"``: the Oxford/Paris ``compute_ap`` protocol used by the
  DeepFirearm authors. For the k-th hit (k = 0, 1, ...) at 0-based rank r it
  averages the precision just before and just after the hit::

      p0 = k / r  (1 when r = 0),   p1 = (k + 1) / (r + 1),
      AP = sum over hits of (p0 + p1) / 2 / n_relevant

* ``mode="standard"``: non-interpolated AP, the mean over relevant items of
  the precision at their rank, ``(k + 1) / (r + 1)``. Without tied scores it
  equals ``sklearn.metrics.average_precision_score``.

Three more from *A Metric Learning Reality Check* (Musgrave et al., 2020),
for a query with ``R`` relevant items:

* ``R-Precision``: the fraction of the top ``R`` that is relevant;
* ``MAP@R``: standard AP with the ranking cut at ``R``, i.e. the sum of the
  precisions ``(k + 1) / (r + 1)`` of the hits ranked ``r < R``, over ``R``;
* ``P@1``: whether the first result is relevant (equal to R@1 here, where
  every query has at least one relevant item).

Everything is vectorised over queries: one similarity matmul and one sort per
chunk of queries, then only the ranks of the relevant items are used
(:class:`Ranks`). Exactly tied scores are ordered by
``torch.sort(..., stable=True)``, i.e. the lower database position comes first.

The same metrics are computed from rankings given as database ids, such as a
FAISS search returns (:mod:`helpers.search`): :func:`evaluate_ids`,
:func:`mean_average_precision_from_ids` and :func:`recall_at_k_from_ids`. A
top-k list that leaves relevant items out gives exact Recall@K for K <= k and
lower bounds of the mAPs.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

AP_MODES = ("trapezoid", "standard")
REALITY_CHECK = ("MAP@R", "R-Precision", "P@1")
"""The metrics of Musgrave et al. (2020) that :func:`evaluate` adds after mAP and Recall@K."""
DEFAULT_KS = (1, 2, 4, 8, 16, 32)
DEFAULT_PCA_DIMS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CHUNK_ELEMENTS = 2**25
"""Largest score matrix (queries x database entries) handled in one piece (~34M, ~0.6 GB)."""


# --------------------------------------------------------------------------- inputs
def _as_embeddings(x, name: str) -> Tensor:
    """Float32 tensor (rows, dim), L2-normalised, from a torch tensor or NumPy array."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch tensor or NumPy array, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, dim) with n, dim >= 1, got {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    # a single sum is much cheaper than an element-wise check and is non-finite whenever an element is
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return F.normalize(x, dim=1)


def _pair_of_embeddings(query_emb, db_emb) -> tuple[Tensor, Tensor]:
    queries = _as_embeddings(query_emb, "query_emb")
    database = _as_embeddings(db_emb, "db_emb").to(queries.device)
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"query_emb and db_emb must have the same dim, got {queries.shape[1]} "
                         f"and {database.shape[1]}")
    return queries, database


def _relevant_pairs(ground_truth: Sequence, n_queries: int, n_db: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(query, database position) of every relevant pair, int64 and grouped by query; checks the ground truth.

    One non-empty integer array per query, positions ``0 <= position < n_db``
    (only ``>= 0`` when ``n_db``, the database size, is ``None``: unknown).
    """
    if len(ground_truth) != n_queries:
        raise ValueError(f"ground_truth has {len(ground_truth)} entries but there are {n_queries} queries")
    arrays = [np.asarray(g.cpu() if isinstance(g, Tensor) else g).reshape(-1) for g in ground_truth]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    if (lengths == 0).any():
        first = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"query {first} has an empty ground truth: every query needs at least one "
                         f"relevant database item")
    positions = np.concatenate(arrays)
    if positions.dtype.kind not in "iu":
        raise ValueError(f"ground truth must hold integer database positions, got dtype {positions.dtype}")
    positions = positions.astype(np.int64)
    queries = np.repeat(np.arange(n_queries, dtype=np.int64), lengths)
    bad = (positions < 0) if n_db is None else (positions < 0) | (positions >= n_db)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        expected = "0 <= position" if n_db is None else f"0 <= position < {n_db}"
        raise ValueError(f"query {queries[first]} names database position {positions[first]}, expected {expected}")
    return queries, positions


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of integers >= 1, got {ks}")
    return ks


def _check_ids(ids, n_db: int | None) -> np.ndarray:
    """Ranked database ids (Q, k) as int64, checked: positions ``0 <= id < n_db`` or -1 (no result), no repeats."""
    ids = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 2-D integer array (queries, k >= 1), got dtype {ids.dtype} "
                         f"and shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if n_db is not None:
        if isinstance(n_db, bool) or not isinstance(n_db, (int, np.integer)) or n_db < 1:
            raise ValueError(f"n_db must be an integer >= 1, got {n_db!r}")
        if ids.shape[1] > n_db:
            raise ValueError(f"ids has {ids.shape[1]} columns but n_db={n_db}: a ranking has at most n_db entries")
    if ids.min() < -1 or (n_db is not None and ids.max() >= n_db):
        raise ValueError(f"ids must hold database positions 0 <= id < n_db={n_db} or -1 (no result), "
                         f"got values from {ids.min()} to {ids.max()}")
    ordered = np.sort(ids, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise ValueError("ids repeats a database position within a query's ranking")
    return ids


# --------------------------------------------------------------------------- ranking
def _stable_descending_order(scores: Tensor) -> Tensor:
    """Column order of each row by descending score; exact ties keep the lower index first."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def _chunks(n_queries: int, n_db: int) -> Iterable[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // n_db)
    for start in range(0, n_queries, step):
        yield start, min(start + step, n_queries)


def similarity_ranking(query_emb, db_emb, k: int | None = None) -> np.ndarray:
    """Database positions sorted by descending cosine similarity, one row per query.

    Returns an int64 array (Q, N), or (Q, min(k, N)) with ``k``. Exact ties keep the
    lower database position first.
    """
    queries, database = _pair_of_embeddings(query_emb, db_emb)
    width = database.shape[0] if k is None else min(int(k), database.shape[0])
    if width < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = []
    for start, stop in _chunks(queries.shape[0], database.shape[0]):
        order = _stable_descending_order(queries[start:stop] @ database.T)
        rows.append(order[:, :width].cpu())
    return torch.cat(rows).numpy()


class Ranks(NamedTuple):
    """Where each query's ranking put its relevant items: what every metric here is computed from.

    ``query[i]`` and ``rank[i]`` are the query and the 0-based rank of hit
    ``i``, hits grouped by query and sorted by rank within it; ``n_relevant[q]``
    is the number of relevant items of query ``q`` and ``n_hits[q]`` how many
    of them its ranking lists (all of them when it ranks the whole database,
    maybe fewer in a top-k list); ``n_ranked`` is the length of every ranking.
    """

    query: np.ndarray
    rank: np.ndarray
    n_relevant: np.ndarray
    n_hits: np.ndarray
    n_ranked: int


def _relevant_ranks(query_emb, db_emb, ground_truth, left_out: np.ndarray | None = None) -> Ranks:
    """The :class:`Ranks` of the full similarity ranking of every query.

    Per chunk of queries: one matmul, one stable sort, a relevance mask built
    with a single scatter, reordered by the ranking, and the positions of its
    True entries. ``left_out[q]``, when given, is a database position that
    query ``q`` ranks last (itself, in a leave-one-out ranking); it must not
    be relevant, so it precedes no hit.
    """
    queries, database = _pair_of_embeddings(query_emb, db_emb)
    n_queries, n_db = queries.shape[0], database.shape[0]
    relevant_query, position = _relevant_pairs(ground_truth, n_queries, n_db)
    keys = np.unique(relevant_query * n_db + position)  # duplicates count once
    n_relevant = np.bincount(keys // n_db, minlength=n_queries)
    key_bounds = np.searchsorted(keys, np.arange(n_queries + 1, dtype=np.int64) * n_db)
    keys_t = torch.from_numpy(keys).to(queries.device)
    hit_query, hit_rank = [], []
    for start, stop in _chunks(n_queries, n_db):
        scores = queries[start:stop] @ database.T
        if left_out is not None:
            scores[torch.arange(stop - start), torch.from_numpy(left_out[start:stop])] = -torch.inf
        order = _stable_descending_order(scores)
        relevant = torch.zeros((stop - start) * n_db, dtype=torch.bool, device=queries.device)
        relevant[keys_t[key_bounds[start]:key_bounds[stop]] - start * n_db] = True
        rows, ranks = relevant.view(stop - start, n_db).gather(1, order).nonzero(as_tuple=True)
        hit_query.append((rows + start).cpu())
        hit_rank.append(ranks.cpu())
    return Ranks(torch.cat(hit_query).numpy(), torch.cat(hit_rank).numpy(), n_relevant, n_relevant, n_db)


def _hit_numbers(n_hits: np.ndarray) -> np.ndarray:
    """0-based number k of each hit within its query, for hits grouped by query."""
    first = np.cumsum(n_hits) - n_hits
    return np.arange(int(n_hits.sum())) - np.repeat(first, n_hits)


def average_precision_from_ranks(hit_query, hit_rank, n_relevant, mode: str = "trapezoid",
                                 n_hits=None) -> np.ndarray:
    """Per-query AP from the 0-based ranks of the hits, grouped by query and sorted by rank within it.

    ``hit_query[i]`` and ``hit_rank[i]`` give the query and rank of hit ``i``;
    ``n_relevant[q]`` is the number of relevant items of query ``q`` (the
    divisor), ``n_hits[q]`` the number of hits listed for it (default: all of
    them, ``n_relevant``). A ranking cut at top-k lists fewer hits than there
    are relevant items; the missing ones then add nothing, as if never retrieved.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode must be one of {AP_MODES}, got {mode!r}")
    k = _hit_numbers(n_relevant if n_hits is None else n_hits).astype(np.float64)
    r = hit_rank.astype(np.float64)
    after = (k + 1) / (r + 1)
    if mode == "standard":
        precision = after
    else:
        before = np.where(r > 0, k / np.maximum(r, 1), 1.0)
        precision = (before + after) / 2
    sums = np.bincount(hit_query, weights=precision, minlength=n_relevant.size)
    return sums / n_relevant


def reality_check_from_ranks(hit_query, hit_rank, n_relevant, n_hits=None) -> dict[str, np.ndarray]:
    """Per-query MAP@R, R-Precision and P@1 from the 0-based ranks of the hits (see the module docstring).

    Arguments as in :func:`average_precision_from_ranks`: relevant items a
    top-k list leaves out count as ranked beyond R.
    """
    k = _hit_numbers(n_relevant if n_hits is None else n_hits).astype(np.float64)
    r = hit_rank.astype(np.float64)
    within_r = r < n_relevant[hit_query]
    per_query = lambda weights: np.bincount(hit_query, weights=weights, minlength=n_relevant.size)
    return {"MAP@R": per_query((k + 1) / (r + 1) * within_r) / n_relevant,
            "R-Precision": per_query(within_r.astype(np.float64)) / n_relevant,
            "P@1": per_query((r == 0).astype(np.float64))}


def _recall(ranks: Ranks, ks: tuple[int, ...]) -> dict[int, float]:
    """``{K: recall}``: the fraction of queries with a hit ranked before K (K capped at ``n_ranked``)."""
    first = np.full(ranks.n_hits.size, ranks.n_ranked)  # no hit listed: never before any K
    listed = ranks.n_hits > 0
    first[listed] = ranks.rank[(np.cumsum(ranks.n_hits) - ranks.n_hits)[listed]]
    return {k: float(np.mean(first < min(k, ranks.n_ranked))) for k in ks}


def _row(ranks: Ranks, ks: tuple[int, ...], name: str | None) -> dict:
    """The row of :func:`evaluate` from the ranks of the hits: both mAPs, R@K for ``ks``, :data:`REALITY_CHECK`."""
    hits = ranks.query, ranks.rank, ranks.n_relevant
    row = {} if name is None else {"name": name}
    for mode in AP_MODES:
        row[f"mAP ({mode})"] = float(average_precision_from_ranks(*hits, mode, ranks.n_hits).mean())
    row.update({f"R@{k}": value for k, value in _recall(ranks, ks).items()})
    row.update({metric: float(values.mean())
                for metric, values in reality_check_from_ranks(*hits, ranks.n_hits).items()})
    return row


# --------------------------------------------------------------------------- metrics
def average_precision(query_emb, db_emb, ground_truth, mode: str = "trapezoid") -> np.ndarray:
    """Average precision of every query, a float64 array (Q,).

    ``mode`` is ``"trapezoid"`` (the
    paper's Oxford/Paris protocol) or ``"standard"`` (non-interpolated, as
    scikit-learn); see the module docstring for the formulas. Duplicate
    positions in a query's ground truth count once.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode must be one of {AP_MODES}, got {mode!r}")
    ranks = _relevant_ranks(query_emb, db_emb, ground_truth)
    return average_precision_from_ranks(ranks.query, ranks.rank, ranks.n_relevant, mode)


def leave_one_out_map(emb, labels, mode: str = "trapezoid") -> tuple[float, np.ndarray]:
    """Return ``(mAP, per-query APs)`` with every image a query against all the other images.

    The query is left out of its own ranking (ranked last); the other images
    with its label are its relevant items. An image with a negative label (a
    distractor that matches nothing) or a label no other image has is ranked
    but is not a query. With every validation image a query, the score moves
    far less from epoch to epoch than with a few queries.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    values, counts = np.unique(labels, return_counts=True)
    shared = values[(counts >= 2) & (values >= 0)]
    queries = np.flatnonzero(np.isin(labels, shared))
    if queries.size == 0:
        raise ValueError("no label is shared by two images: leave-one-out retrieval has no query")
    everything = np.arange(labels.size)
    ground_truth = [everything[(labels == labels[q]) & (everything != q)] for q in queries]
    emb = _as_embeddings(emb, "emb")
    if emb.shape[0] != labels.size:
        raise ValueError(f"labels has {labels.size} entries but there are {emb.shape[0]} embeddings")
    ranks = _relevant_ranks(emb[torch.from_numpy(queries)], emb, ground_truth, left_out=queries)
    aps = average_precision_from_ranks(ranks.query, ranks.rank, ranks.n_relevant, mode)
    return float(aps.mean()), aps


def mean_average_precision(query_emb, db_emb, ground_truth,
                           mode: str = "trapezoid") -> tuple[float, np.ndarray]:
    """Return ``(mAP, per-query APs)``: the mean of :func:`average_precision` over queries."""
    aps = average_precision(query_emb, db_emb, ground_truth, mode=mode)
    return float(aps.mean()), aps


def recall_at_k(query_emb, db_emb, ground_truth, ks=DEFAULT_KS) -> dict[int, float]:
    """Recall@K: the fraction of queries with at least one relevant item among their top K.

    Returns ``{k: recall}``; a K larger
    than the database is capped at the database size.
    """
    ks = _check_ks(ks)
    return _recall(_relevant_ranks(query_emb, db_emb, ground_truth), ks)


def evaluate(query_emb, db_emb, ground_truth, ks=DEFAULT_KS, name: str | None = None) -> dict:
    """One tidy result row: both mAP flavours, Recall@K and MAP@R, R-Precision, P@1 from a single ranking.

    Keys: ``"name"`` (when given),
    ``"mAP (trapezoid)"``, ``"mAP (standard)"``, then ``"R@1"``, ``"R@2"``, ...,
    then :data:`REALITY_CHECK`. Values are fractions in [0, 1]. ``pandas.DataFrame([evaluate(...), ...])``
    makes a results table.
    """
    ks = _check_ks(ks)
    return _row(_relevant_ranks(query_emb, db_emb, ground_truth), ks, name)


def _to_numpy(x, name: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, dim) with n >= 1, got {array.shape}")
    return array.astype(np.float64)


def pca_sweep(query_emb, db_emb, ground_truth, dims=DEFAULT_PCA_DIMS, fit_on=None) -> pd.DataFrame:
    """mAP and Recall@1 after PCA reduction to each dimension in ``dims``.

    A ``sklearn.decomposition.PCA``
    (no whitening) is fitted once on ``fit_on`` (default: the database
    embeddings); each dimension keeps the leading components, and the
    projected embeddings are L2-normalised again before ranking. Dimensions
    above ``min(embedding size, number of fitting samples)`` are dropped and
    that full dimension is always included. At the full dimension PCA is only
    a centring plus a rotation, so that row equals the metrics of the centred
    embeddings (not quite those of the raw ones).

    Columns: ``dim``, ``mAP (trapezoid)``, ``mAP (standard)``, ``R@1`` and
    ``explained variance`` (cumulative ratio of the fitted variance kept).
    """
    from sklearn.decomposition import PCA

    queries, database = _to_numpy(query_emb, "query_emb"), _to_numpy(db_emb, "db_emb")
    fit = database if fit_on is None else _to_numpy(fit_on, "fit_on")
    if not queries.shape[1] == database.shape[1] == fit.shape[1]:
        raise ValueError(f"embedding sizes differ: query {queries.shape[1]}, database "
                         f"{database.shape[1]}, fit_on {fit.shape[1]}")
    dims = sorted({int(d) for d in dims})
    if not dims or dims[0] < 1:
        raise ValueError(f"dims must be integers >= 1, got {dims}")
    full = min(fit.shape)
    kept = [d for d in dims if d < full] + [full]
    pca = PCA(n_components=full, whiten=False, svd_solver="full").fit(fit)
    q_proj, db_proj = pca.transform(queries), pca.transform(database)
    explained = np.cumsum(pca.explained_variance_ratio_)
    rows = []
    for dim in kept:
        row = evaluate(q_proj[:, :dim].astype(np.float32), db_proj[:, :dim].astype(np.float32),
                       ground_truth, ks=(1,))
        rows.append({"dim": dim, **row, "explained variance": float(explained[dim - 1])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- distances
def _category_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For category codes 0..C-1: items sorted by category, each category's start and size there."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    first = np.cumsum(counts) - counts
    return order, first, counts


def _positive_partners(codes: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random other item of the same category for each anchor (its category has >= 2)."""
    order, first, counts = _category_groups(codes)
    slot = np.empty(len(codes), dtype=np.int64)
    slot[order] = np.arange(len(codes)) - np.repeat(first, counts)
    own = codes[anchors]
    partner_slot = (slot[anchors] + rng.integers(1, counts[own])) % counts[own]
    return order[first[own] + partner_slot]


def _negative_partners(codes: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random item of another category for each anchor."""
    order, first, counts = _category_groups(codes)
    own = codes[anchors]
    # draw among the items outside the anchor's category, then step over that category's block
    offset = rng.integers(0, len(codes) - counts[own])
    offset = offset + np.where(offset >= first[own], counts[own], 0)
    return order[offset]


def distance_pairs(emb, labels, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of ``n_pairs`` random positive and ``n_pairs`` random negative pairs.

    For distance histograms. Embeddings
    are L2-normalised first, so distances lie in [0, 2] as in the losses.
    Anchors are drawn uniformly among items (of categories with at least two
    items, for positives); a positive partner is a uniformly random other item
    of the same category, a negative partner one of another category. Returns
    ``(distances, y)``: float64 (2 * n_pairs,) and int64 (2 * n_pairs,), with
    y = 1 for the positive pairs (first half) and 0 for the negative ones.
    """
    x = _as_embeddings(emb, "emb").cpu().numpy().astype(np.float64)
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries but emb has {len(x)} rows")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    values, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    if len(values) < 2:
        raise ValueError("labels hold a single category: negative pairs need at least two")
    if counts.max() < 2:
        raise ValueError("every category has one item: positive pairs need a category with two")
    rng = np.random.default_rng(seed)
    pos_a = rng.choice(np.flatnonzero(counts[codes] >= 2), size=n_pairs)
    pos_b = _positive_partners(codes, pos_a, rng)
    neg_a = rng.integers(0, len(x), size=n_pairs)
    neg_b = _negative_partners(codes, neg_a, rng)
    a, b = np.concatenate([pos_a, neg_a]), np.concatenate([pos_b, neg_b])
    distances = np.linalg.norm(x[a] - x[b], axis=1)
    y = np.repeat(np.array([1, 0], dtype=np.int64), n_pairs)
    return distances, y


def confused_pairs(ranking: np.ndarray, query_labels, database_labels, k: int = 10) -> pd.DataFrame:
    """Count, over all queries, the wrong-category results in each top-k, by (query category, result category).

    Returns a DataFrame with
    columns ``query_label``, ``result_label``, ``count`` and ``share`` (the
    count over all top-k slots of that query category), most confused first.
    """
    top = np.asarray(ranking)[:, :k]
    query_labels = np.asarray(query_labels)
    result_labels = np.asarray(database_labels)[top]
    wrong = result_labels != query_labels[:, None]
    frame = pd.DataFrame({"query_label": np.broadcast_to(query_labels[:, None], top.shape)[wrong],
                          "result_label": result_labels[wrong]})
    counts = frame.value_counts().rename("count").reset_index()
    slots = pd.Series(query_labels).value_counts() * top.shape[1]
    counts["share"] = counts["count"] / counts["query_label"].map(slots)
    return counts.sort_values(["count", "query_label", "result_label"], ascending=[False, True, True],
                              ignore_index=True)


# --------------------------------------------------------------------------- metrics from ranked ids
def _hit_mask(ids: np.ndarray, ground_truth: Sequence, n_db: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(whether each ranked id is relevant to its query (Q, k), the number of relevant items per query).

    ``ids`` is checked by :func:`_check_ids`; id -1 is never relevant.
    """
    n_queries = len(ids)
    relevant_query, position = _relevant_pairs(ground_truth, n_queries, n_db)
    width = n_db or int(max(ids.max(), position.max())) + 1  # one flat key per (query, position)
    keys = np.unique(relevant_query * width + position)  # duplicates count once
    flat = (np.arange(n_queries, dtype=np.int64)[:, None] * width + ids).ravel()
    slot = np.minimum(np.searchsorted(keys, flat), len(keys) - 1)
    hits = ((keys[slot] == flat) & (ids.ravel() >= 0)).reshape(ids.shape)
    return hits, np.bincount(keys // width, minlength=n_queries)


def _ranks_from_ids(ids, ground_truth: Sequence, n_db: int | None) -> Ranks:
    """The :class:`Ranks` of rankings given as database ids (Q, k), best first."""
    ids = _check_ids(ids, n_db)
    hits, n_relevant = _hit_mask(ids, ground_truth, n_db)
    hit_query, hit_rank = np.nonzero(hits)  # grouped by query, by rank within a query
    return Ranks(hit_query, hit_rank, n_relevant, np.bincount(hit_query, minlength=len(hits)), hits.shape[1])


def relevance_matrix(ranking: np.ndarray, ground_truth: Sequence) -> np.ndarray:
    """Boolean (Q, k) matrix: whether the result at each rank of ``ranking`` is relevant to its query.

    ``ranking`` holds database positions, best first, as returned by
    :func:`similarity_ranking` (-1, no result, is never relevant).
    """
    return _hit_mask(_check_ids(ranking, None), ground_truth, None)[0]


def mean_average_precision_from_ids(ids, ground_truth: Sequence, n_db: int,
                                    mode: str = "trapezoid") -> tuple[float, np.ndarray]:
    """Return ``(mAP, per-query APs)`` from ranked database ids (Q, k).

    The same metric as :func:`mean_average_precision`.
    ``ids`` holds each query's database positions, best first (e.g. from
    :func:`helpers.search.search`; -1 means no result), ``ground_truth`` one
    integer array of relevant positions per query, ``n_db`` the database
    size, ``mode`` ``"trapezoid"`` or ``"standard"``. With ``k = n_db`` this
    is the full-ranking AP. With ``k < n_db`` the ranking is truncated: a
    relevant item outside the top k counts as never retrieved and adds 0 to
    the precision sum, which is still divided by the query's total number of
    relevant items, so the truncated AP is a lower bound of the full one for
    the same ranking.
    """
    ranks = _ranks_from_ids(ids, ground_truth, n_db)
    aps = average_precision_from_ranks(ranks.query, ranks.rank, ranks.n_relevant, mode, ranks.n_hits)
    return float(aps.mean()), aps


def recall_at_k_from_ids(ids, ground_truth: Sequence, ks=DEFAULT_KS, *,
                         n_db: int | None = None) -> dict[int, float]:
    """Recall@K from ranked database ids (Q, k), as :func:`recall_at_k`.

    The fraction of queries with at least one relevant item among their first
    K ids; returns ``{K: recall}``. Only the first K ids matter, so truncated
    rankings give the same values as full ones for every K <= k. A K above k
    is an error, unless ``n_db`` (the database size) is given and equals k
    (the rows rank the whole database): then, as in :func:`recall_at_k`, a
    K above ``n_db`` is capped at ``n_db``.
    """
    ks = _check_ks(ks)
    ranks = _ranks_from_ids(ids, ground_truth, n_db)
    if ranks.n_ranked != n_db and max(ks) > ranks.n_ranked:
        raise ValueError(f"ks must be <= the number of ids per query ({ranks.n_ranked}) unless they rank the "
                         f"whole database (n_db={n_db}), got {max(ks)}")
    return _recall(ranks, ks)


def evaluate_ids(top_ids, ground_truth: Sequence, ks=DEFAULT_KS, name: str | None = None, *,
                 n_db: int | None = None) -> dict:
    """The row of :func:`evaluate` from ranked database ids (Q, k), best first, such as a FAISS search returns.

    Relevant items missing from a query's ids count as never retrieved. So
    when the ids rank the whole database (``k`` equals ``n_db``, the database
    size) every value equals :func:`evaluate`'s for that ranking. With a
    top-k list (``k < n_db``, or ``n_db`` not given):

    * R@K and P@1 are exact, but R@K is left out for every K above ``k``
      (K above ``n_db`` is capped at ``n_db`` only for a whole-database ranking);
    * both mAPs, MAP@R and R-Precision are lower bounds: the relevant items
      outside the top k add nothing (see :func:`mean_average_precision_from_ids`).

    ``-1`` in ``top_ids`` means no result; ``n_db``, when given, also bounds
    the ids and ground-truth positions.
    """
    ks = _check_ks(ks)
    ranks = _ranks_from_ids(top_ids, ground_truth, n_db)
    listed = ks if ranks.n_ranked == n_db else tuple(k for k in ks if k <= ranks.n_ranked)
    return _row(ranks, listed, name)
