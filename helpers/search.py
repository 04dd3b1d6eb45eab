"""Similarity search with FAISS indexes over L2-normalised embeddings.

Database and query embeddings are L2-normalised here (as in
:mod:`helpers.metrics`), so the inner product every index uses is the cosine
similarity. Three kinds of index:

* ``"exact"``: ``faiss.IndexFlatIP``, brute force over the raw vectors.
* ``"ivf"``: ``faiss.IndexIVFFlat``. k-means splits the database into ``nlist``
  cells (an inner-product flat quantizer holds their centroids); a query scans
  only the raw vectors of its ``nprobe`` most similar cells.
* ``"ivfpq"``: ``faiss.IndexIVFPQ``. The same cells, but each vector is stored
  as a product-quantisation code of its residual to its centroid: ``m``
  sub-vectors of ``nbits`` bits each, ``m * nbits / 8`` bytes per vector,
  and scores are approximated from the codes.

``refine=k_factor`` wraps an approximate index in ``faiss.IndexRefineFlat``:
it keeps the raw vectors as well, takes ``k * k_factor`` candidates from the
approximate index and re-ranks them by their exact score.

:func:`add` grows a built index without training it again. The retrieval
metrics of what :func:`search` returns are in :mod:`helpers.metrics`
(:func:`helpers.metrics.evaluate_ids`). :func:`torch_topk` is exact search with
one matmul and ``torch.topk`` per chunk of queries, the reference that FAISS
is timed against, and :func:`clustered_unit_vectors` draws seeded synthetic
vectors around given centres, to make large test databases.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

KINDS = ("exact", "ivf", "ivfpq")


@dataclass
class SearchIndex:
    """A built FAISS index and the settings it was built with.

    ``index`` is what :func:`search` queries (the ``IndexRefineFlat`` wrapper
    when ``refine`` is set); ``ivf`` is the IVF index inside it, whose
    ``nprobe`` :func:`set_nprobe` changes (``None`` for ``"exact"``).
    ``nlist``, ``m``, ``nbits`` and ``nprobe`` are ``None`` where the kind has
    no such setting; ``train_size`` is the number of vectors it was trained on
    (0 for ``"exact"``).
    """

    index: faiss.Index
    kind: str
    dim: int
    ntotal: int
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None
    refine: float | None = None
    train_size: int = 0
    ivf: faiss.Index | None = None


# --------------------------------------------------------------------------- inputs
def _as_unit_float32(x, name: str) -> np.ndarray:
    """C-contiguous float32 array (n, dim), rows L2-normalised, from a torch tensor or NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch tensor or NumPy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D with shape (n, dim), n, dim >= 1, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float32)
    # one sum is much cheaper than an element-wise check, and is not finite whenever an element is not
    if not np.isfinite(x.sum(dtype=np.float64)) and not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _default_nlist(n: int) -> int:
    """About 4 * sqrt(n) cells, but at most n / 39 (FAISS wants >= 39 training points per cell)."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


# --------------------------------------------------------------------------- building
def build_index(db_emb, kind: str = "exact", *, nlist: int | None = None, m: int = 16, nbits: int = 8,
                nprobe: int | None = None, refine: float | None = None, train_size: int | None = None,
                seed: int = 0) -> SearchIndex:
    """Build a FAISS inner-product index over the L2-normalised rows of ``db_emb`` (n, d).

    ``kind`` is ``"exact"``, ``"ivf"`` or ``"ivfpq"`` (see the module
    docstring). IVF settings (ignored by ``"exact"``): ``nlist`` cells
    (default about ``4 * sqrt(n)``, at most ``n / 39``); ``nprobe`` cells
    scanned per query, at most ``nlist`` (default ``min(8, nlist)``;
    :func:`set_nprobe` changes it later). IVF-PQ settings: ``m`` sub-quantizers (must divide ``d``) of
    ``nbits`` bits each. ``refine`` (an approximate kind only) is the
    ``k_factor`` of an ``IndexRefineFlat`` re-ranking step. The k-means
    trainings run on ``train_size`` rows drawn without replacement with
    ``seed`` (default: all rows; FAISS itself subsamples to 256 points per
    centroid) and are seeded with ``seed``. Row ``i`` of ``db_emb`` gets id ``i``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = _as_unit_float32(db_emb, "db_emb")
    n, d = x.shape
    if kind == "exact":
        if refine is not None:
            raise ValueError("refine only applies to the approximate kinds 'ivf' and 'ivfpq'")
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return SearchIndex(index=index, kind=kind, dim=d, ntotal=int(index.ntotal))

    nlist = _default_nlist(n) if nlist is None else _positive_int(nlist, "nlist")
    if nlist > n:
        raise ValueError(f"nlist must be <= the number of database vectors ({n}), got {nlist}")
    nprobe = min(8, nlist) if nprobe is None else _positive_int(nprobe, "nprobe")
    if nprobe > nlist:
        raise ValueError(f"nprobe must be between 1 and nlist={nlist}, got {nprobe}")
    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, (int, float))
                               or not refine >= 1):
        raise ValueError(f"refine must be None or a k_factor >= 1, got {refine!r}")
    if kind == "ivfpq":
        m, nbits = _positive_int(m, "m"), _positive_int(nbits, "nbits")
        if d % m:
            raise ValueError(f"m must divide the embedding dim {d}, got m={m}")
        if nbits > 16:
            raise ValueError(f"nbits must be between 1 and 16, got {nbits}")
    n_train = n if train_size is None else _positive_int(train_size, "train_size")
    if n_train > n:
        raise ValueError(f"train_size must be <= the number of database vectors ({n}), got {n_train}")
    if n_train < nlist:
        raise ValueError(f"k-means needs at least nlist={nlist} training vectors, got train_size={n_train}")
    if kind == "ivfpq" and n_train < 2**nbits:
        raise ValueError(f"the PQ codebooks need at least 2**nbits={2**nbits} training vectors, "
                         f"got train_size={n_train}")
    train = x if n_train == n else x[np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))]

    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf":
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        ivf.pq.cp.seed = seed
    ivf.cp.seed = seed
    ivf.nprobe = nprobe
    index = ivf
    if refine is not None:
        index = faiss.IndexRefineFlat(ivf)
        index.k_factor = float(refine)
    index.train(train)
    index.add(x)
    return SearchIndex(index=index, kind=kind, dim=d, ntotal=int(index.ntotal), nlist=nlist,
                       m=m if kind == "ivfpq" else None, nbits=nbits if kind == "ivfpq" else None,
                       nprobe=nprobe, refine=None if refine is None else float(refine),
                       train_size=n_train, ivf=ivf)


def add(index: SearchIndex, db_emb) -> None:
    """Append the L2-normalised rows of ``db_emb`` to a built index; they get the next ids.

    The first new row gets id ``index.ntotal``. An IVF index keeps the cells
    and codebooks it was trained on (a refinement step stores the raw rows
    too), so a database can grow without training again.
    """
    x = _as_unit_float32(db_emb, "db_emb")
    if x.shape[1] != index.dim:
        raise ValueError(f"db_emb must have dim {index.dim} like the index, got {x.shape[1]}")
    index.index.add(x)
    index.ntotal = int(index.index.ntotal)


def set_nprobe(index: SearchIndex, nprobe: int) -> None:
    """Set how many IVF cells a query scans, 1 <= ``nprobe`` <= ``nlist`` (``nlist`` makes IVF-Flat exact)."""
    if index.ivf is None:
        raise ValueError(f"nprobe only applies to IVF indexes, this one is {index.kind!r}")
    nprobe = _positive_int(nprobe, "nprobe")
    if nprobe > index.nlist:
        raise ValueError(f"nprobe must be between 1 and nlist={index.nlist}, got {nprobe}")
    index.ivf.nprobe = nprobe
    index.nprobe = nprobe


# --------------------------------------------------------------------------- searching
def search(index: SearchIndex, query_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar database ids of each L2-normalised query.

    Returns ``(scores, ids)``, float32 and int64 arrays (Q, k), best first;
    scores are (approximate, for ``"ivfpq"`` without refinement) cosine
    similarities. When an IVF search finds fewer than ``k`` vectors in the
    cells it scans, the missing places hold id -1. The order of exactly tied
    scores is FAISS's and may differ from :func:`helpers.metrics.similarity_ranking`.
    """
    q = _as_unit_float32(query_emb, "query_emb")
    if q.shape[1] != index.dim:
        raise ValueError(f"query_emb must have dim {index.dim} like the index, got {q.shape[1]}")
    k = _positive_int(k, "k")
    if k > index.ntotal:
        raise ValueError(f"k must be between 1 and the number of database vectors ({index.ntotal}), got {k}")
    scores, ids = index.index.search(q, k)
    return scores, ids.astype(np.int64, copy=False)


def index_memory_bytes(index: SearchIndex) -> int:
    """Size in bytes of the index serialised by ``faiss.serialize_index``.

    That is what its data take: stored vectors or codes, ids, centroids,
    codebooks (and the raw vectors kept by a refinement step). The process
    memory is a little larger: spare capacity of the inverted lists, allocator
    overhead and the Python objects are not counted.
    """
    return int(faiss.serialize_index(index.index).size)


def recall_of_exact_topk(approx_ids, exact_ids, k: int) -> float:
    """Mean over queries of the fraction of the exact top-``k`` ids found in the approximate top-``k``.

    Both arguments are id arrays (Q, >= k), best first, e.g. from
    :func:`search`; id -1 (no result) never matches. Under exactly tied scores
    the exact top-k is not unique, so this can be below 1 for a correct search.
    """
    approx, exact = np.asarray(approx_ids), np.asarray(exact_ids)
    k = _positive_int(k, "k")
    for name, a in (("approx_ids", approx), ("exact_ids", exact)):
        if a.ndim != 2 or a.shape[1] < k or a.dtype.kind not in "iu":
            raise ValueError(f"{name} must be a 2-D integer array with at least k={k} columns, "
                             f"got dtype {a.dtype} and shape {a.shape}")
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"approx_ids and exact_ids must have the same number of queries, got "
                         f"{approx.shape[0]} and {exact.shape[0]}")
    approx, exact = approx[:, :k].astype(np.int64), exact[:, :k].astype(np.int64)
    # one flat key per (query, id): then a single isin compares every row at once
    width = int(max(approx.max(), exact.max())) + 2
    row = np.arange(len(approx), dtype=np.int64)[:, None] * width
    exact_keys = np.unique((row + exact)[exact >= 0])
    approx_keys = np.unique((row + approx)[approx >= 0])
    found = np.bincount(approx_keys[np.isin(approx_keys, exact_keys)] // width, minlength=len(approx))
    wanted = np.bincount(exact_keys // width, minlength=len(exact))
    return float(np.mean(found / np.maximum(wanted, 1)))


def torch_topk(query_emb, db_emb, k: int, max_scores: int = 2**26) -> np.ndarray:
    """Exact top-``k`` database ids (Q, k) by inner product, best first: the floor of exact search.

    One ``query @ db.T`` matmul and one ``torch.topk`` per chunk of queries,
    each chunk holding at most ``max_scores`` scores. Inputs are float32
    tensors or arrays used as they are (not normalised again), so callers time
    the search alone; pass L2-normalised rows for cosine similarity. The order
    of exactly tied scores is ``torch.topk``'s.
    """
    queries, database = (torch.as_tensor(x, dtype=torch.float32) for x in (query_emb, db_emb))
    k = _positive_int(k, "k")
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"query_emb and db_emb must be 2-D with the same dim, got shapes "
                         f"{tuple(queries.shape)} and {tuple(database.shape)}")
    if k > database.shape[0]:
        raise ValueError(f"k must be between 1 and the number of database vectors ({database.shape[0]}), got {k}")
    step = max(1, max_scores // database.shape[0])
    ids = [torch.topk(queries[s:s + step] @ database.T, k, dim=1).indices
           for s in range(0, queries.shape[0], step)]
    return torch.cat(ids).numpy()


# --------------------------------------------------------------------------- synthetic vectors
def clustered_unit_vectors(centres, n: int, noise, seed=0, chunk: int = 100_000) -> np.ndarray:
    """``n`` seeded unit vectors (float32, (n, dim)) scattered around the rows of ``centres``.

    Each vector is a uniformly drawn row of ``centres`` (n_centres, dim) plus
    Gaussian noise, L2-normalised. ``noise`` is either a number, the standard
    deviation of isotropic noise per coordinate, or a 2-D array ``B``
    (r, dim): the noise is then ``z @ B`` for ``r`` standard normal numbers
    ``z``, Gaussian with covariance ``B.T @ B`` (e.g. principal directions of
    real variation scaled by their standard deviations). ``seed`` is anything
    ``numpy.random.default_rng`` accepts (e.g. ``[seed, stream]`` for
    independent streams from one seed); the vectors are made ``chunk`` rows at
    a time, so no full-size temporary is allocated besides the result.
    """
    centres = np.asarray(centres, dtype=np.float32)
    if centres.ndim != 2 or centres.shape[0] == 0 or centres.shape[1] == 0:
        raise ValueError(f"centres must be 2-D with shape (n_centres, dim), got shape {centres.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    dim = centres.shape[1]
    if np.ndim(noise) == 0:
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        scale, basis = np.float32(noise), None
    else:
        basis = np.asarray(noise, dtype=np.float32)
        if basis.ndim != 2 or basis.shape[0] == 0 or basis.shape[1] != dim or not np.isfinite(basis).all():
            raise ValueError(f"noise must be a number or a finite 2-D array (r, dim={dim}), got shape "
                             f"{basis.shape}")
    rng = np.random.default_rng(seed)
    out = np.empty((int(n), dim), dtype=np.float32)
    for start in range(0, int(n), chunk):
        stop = min(start + chunk, int(n))
        x = centres[rng.integers(0, len(centres), stop - start)]
        if basis is None:
            x += scale * rng.standard_normal((stop - start, dim), dtype=np.float32)
        else:
            x += rng.standard_normal((stop - start, len(basis)), dtype=np.float32) @ basis
        out[start:stop] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out
