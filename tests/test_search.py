"""FAISS search against the dense ranking of helpers.metrics, its metrics from ids, hand loops and hand-worked cases."""
import numpy as np
import pytest
import torch

from helpers import metrics as M
from helpers import search as S
from test_metrics import _loop_truncated_ap, _random_problem  # top-k AP loop; queries near their ground truth


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _clustered(n_db=4000, n_queries=100, dim=32, n_centres=200, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n):
        x = centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n_queries), draw(n_db)


# --------------------------------------------------------------------------- exact search
def test_exact_topk_equals_dense_ranking():
    queries, database, _ = _random_problem()
    index = S.build_index(torch.from_numpy(database), "exact")
    scores, ids = S.search(index, torch.from_numpy(queries), 12)
    assert ids.dtype == np.int64 and ids.shape == scores.shape == (len(queries), 12)
    np.testing.assert_array_equal(ids, M.similarity_ranking(queries, database, 12))
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = database / np.linalg.norm(database, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ d.T, ids, axis=1), atol=1e-5)


@pytest.mark.parametrize("mode", M.AP_MODES)
def test_full_ranking_metrics_equal_dense_metrics(mode):
    queries, database, ground_truth = _random_problem()
    n_db = len(database)
    ground_truth[0] = np.concatenate([ground_truth[0], ground_truth[0][:1]])  # a duplicate counts once
    _, ids = S.search(S.build_index(database), queries, n_db)
    np.testing.assert_array_equal(ids, M.similarity_ranking(queries, database))
    got_map, got_aps = M.mean_average_precision_from_ids(ids, ground_truth, n_db, mode=mode)
    want_map, want_aps = M.mean_average_precision(queries, database, ground_truth, mode=mode)
    assert abs(got_map - want_map) < 1e-12
    np.testing.assert_allclose(got_aps, want_aps, rtol=0, atol=1e-12)
    assert 0.05 < got_map < 0.95  # the APs are spread, not degenerate
    assert M.recall_at_k_from_ids(ids, ground_truth, n_db=n_db) == M.recall_at_k(queries, database,
                                                                                  ground_truth)
    # K above the database size is capped, as in metrics
    assert (M.recall_at_k_from_ids(ids, ground_truth, ks=(5, 1000), n_db=n_db)
            == M.recall_at_k(queries, database, ground_truth, ks=(5, 1000)))


@pytest.mark.parametrize("mode", M.AP_MODES)
def test_truncated_map_equals_hand_loop(mode):
    queries, database, ground_truth = _random_problem(seed=1)
    n_db, k = len(database), 15
    _, ids = S.search(S.build_index(database), queries, k)
    got_map, got_aps = M.mean_average_precision_from_ids(ids, ground_truth, n_db, mode=mode)
    want = np.array([_loop_truncated_ap(row, gt, mode) for row, gt in zip(ids, ground_truth)])
    np.testing.assert_allclose(got_aps, want, rtol=0, atol=1e-12)
    assert got_map == pytest.approx(want.mean(), abs=1e-12)
    # truncation only loses precision terms, and some relevant items do fall outside the top k
    _, full_aps = M.mean_average_precision(queries, database, ground_truth, mode=mode)
    assert (got_aps <= full_aps + 1e-12).all() and (got_aps < full_aps - 1e-6).any()
    assert (M.recall_at_k_from_ids(ids, ground_truth, ks=(1, 5, 15))
            == M.recall_at_k(queries, database, ground_truth, ks=(1, 5, 15)))


def test_recall_of_exact_topk_hand_worked():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[2, 9, 1, 4], [8, -1, 0, 5]])
    # k=3: row 0 finds {1, 2} of {1, 2, 3}; row 1 finds nothing of {5, 6, 7} (8 and 5 come later / -1)
    assert S.recall_of_exact_topk(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert S.recall_of_exact_topk(approx, exact, 4) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert S.recall_of_exact_topk(exact, exact, 4) == 1.0


def test_torch_topk_equals_dense_ranking():
    queries, database, _ = _random_problem()
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = database / np.linalg.norm(database, axis=1, keepdims=True)
    want = M.similarity_ranking(q, d, 12)
    np.testing.assert_array_equal(S.torch_topk(q, d, 12), want)
    np.testing.assert_array_equal(S.torch_topk(torch.from_numpy(q), d, 12, max_scores=len(d) * 3), want)  # chunked
    with pytest.raises(ValueError, match="k must be between"):
        S.torch_topk(q, d, len(d) + 1)
    with pytest.raises(ValueError, match="same dim"):
        S.torch_topk(q[:, :3], d, 2)


def test_clustered_unit_vectors_are_seeded_unit_vectors_near_their_centres():
    centres = np.eye(4, 16, dtype=np.float32)
    x = S.clustered_unit_vectors(centres, 500, noise=0.02, seed=[3, 1])
    assert x.shape == (500, 16) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x, S.clustered_unit_vectors(centres, 500, noise=0.02, seed=[3, 1]))
    assert not np.array_equal(x, S.clustered_unit_vectors(centres, 500, noise=0.02, seed=[3, 2]))
    nearest = (x @ centres.T).max(axis=1)
    assert nearest.min() > 0.9  # noise of norm about 0.02 * sqrt(16) = 0.08
    assert np.bincount((x @ centres.T).argmax(axis=1), minlength=4).min() > 90  # every centre is used
    np.testing.assert_array_equal(S.clustered_unit_vectors(centres, 3, noise=0.0, seed=0) @ centres.T > 0.999,
                                  np.eye(4, dtype=bool)[np.random.default_rng(0).integers(0, 4, 3)])
    assert S.clustered_unit_vectors(centres, 0, noise=0.1).shape == (0, 16)
    # noise along given directions: covariance B.T @ B, nothing outside their span
    basis = np.zeros((2, 16), dtype=np.float32)
    basis[0, 8], basis[1, 9] = 0.3, 0.1
    y = S.clustered_unit_vectors(centres[:1], 4000, noise=basis, seed=1)
    assert (y[:, 1:8] == 0).all() and (y[:, 10:] == 0).all() and (y[:, 0] > 0.5).all()
    spread = (y[:, 8:10] / y[:, :1]).std(axis=0)  # undo the normalisation: the raw noise over the centre's 1
    np.testing.assert_allclose(spread, [0.3, 0.1], rtol=0.05)
    for bad, message in ((dict(centres=centres[0]), "centres"), (dict(n=-1), "n must be"),
                         (dict(noise=-0.1), "noise must be >= 0"), (dict(noise=basis[:, :8]), "dim=16")):
        kwargs = {**dict(centres=centres, n=5, noise=0.1), **bad}
        with pytest.raises(ValueError, match=message):
            S.clustered_unit_vectors(**kwargs)


# --------------------------------------------------------------------------- approximate search
def test_ivf_with_all_cells_probed_is_exact():
    queries, database = _clustered(n_db=2000, n_queries=50)
    index = S.build_index(database, "ivf", nlist=16, nprobe=1)
    assert (index.kind, index.nlist, index.nprobe) == ("ivf", 16, 1)
    S.set_nprobe(index, 16)
    assert index.nprobe == 16
    exact_scores, exact_ids = S.search(S.build_index(database, "exact"), queries, 10)
    scores, ids = S.search(index, queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    S.set_nprobe(index, 1)
    _, ids_1 = S.search(index, queries, 10)
    assert S.recall_of_exact_topk(ids_1, exact_ids, 10) < 1.0  # one cell alone misses neighbours


def test_add_appends_ids_to_a_trained_index():
    queries, database = _clustered(n_db=3000, n_queries=40)
    exact = S.build_index(database[:1000])
    S.add(exact, torch.from_numpy(database[1000:]))
    assert exact.ntotal == 3000
    _, want = S.search(S.build_index(database), queries, 10)
    np.testing.assert_array_equal(S.search(exact, queries, 10)[1], want)
    ivf = S.build_index(database[:1000], "ivf", nlist=16, refine=2)  # cells trained on the first rows only
    S.add(ivf, database[1000:])
    S.set_nprobe(ivf, 16)
    assert ivf.ntotal == ivf.ivf.ntotal == 3000
    np.testing.assert_array_equal(S.search(ivf, queries, 10)[1], want)
    with pytest.raises(ValueError, match="db_emb must have dim 32"):
        S.add(ivf, database[:5, :16])


def test_ivfpq_recall_grows_with_nprobe():
    queries, database = _clustered()
    _, exact_ids = S.search(S.build_index(database, "exact"), queries, 10)
    index = S.build_index(database, "ivfpq", nlist=32, m=8, nbits=6, seed=0)
    assert (index.m, index.nbits, index.ntotal) == (8, 6, len(database))
    recalls = []
    for nprobe in (1, 2, 4, 8, 32):
        S.set_nprobe(index, nprobe)
        recalls.append(S.recall_of_exact_topk(S.search(index, queries, 10)[1], exact_ids, 10))
    assert all(0 < r <= 1 for r in recalls)
    assert all(a <= b for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[-1] > recalls[0] + 0.1, recalls
    # re-ranking the candidates by their exact score can only help here
    refined = S.build_index(database, "ivfpq", nlist=32, m=8, nbits=6, nprobe=32, refine=4)
    assert S.recall_of_exact_topk(S.search(refined, queries, 10)[1], exact_ids, 10) >= recalls[-1]


def test_build_is_seeded_and_memory_is_ordered():
    _, database = _clustered(n_db=3000)
    a = S.build_index(database, "ivfpq", nlist=16, m=8, nbits=6, train_size=2500, seed=3)
    b = S.build_index(database, "ivfpq", nlist=16, m=8, nbits=6, train_size=2500, seed=3)
    assert a.train_size == 2500
    queries, _ = _clustered(n_queries=20, seed=1)
    np.testing.assert_array_equal(S.search(a, queries, 5)[1], S.search(b, queries, 5)[1])
    exact = S.index_memory_bytes(S.build_index(database, "exact"))
    ivf = S.index_memory_bytes(S.build_index(database, "ivf", nlist=16))
    assert len(database) * 32 * 4 <= exact < len(database) * 32 * 4 + 4096
    assert exact < ivf  # raw vectors plus ids and centroids
    # codes of m * nbits / 8 = 6 bytes and an 8-byte id per vector, plus centroids and codebooks
    assert S.index_memory_bytes(a) < 0.2 * exact


# --------------------------------------------------------------------------- bad arguments
def _bad_calls():
    database = np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32)
    nan = database.copy()
    nan[3, 4] = np.nan
    ivf = S.build_index(database, "ivf", nlist=4)
    assert ivf.nprobe == 4  # the default, min(8, nlist)
    exact = S.build_index(database)
    ids = np.tile(np.arange(5), (2, 1))
    return {
        "kind": lambda: S.build_index(database, "hnsw"),
        "db_emb": lambda: S.build_index(database[0]),
        "NaN": lambda: S.build_index(nan),
        "nlist": lambda: S.build_index(database, "ivf", nlist=201),
        "m must divide": lambda: S.build_index(database, "ivfpq", nlist=4, m=7),
        "nbits": lambda: S.build_index(database, "ivfpq", nlist=4, m=8, nbits=0),
        "train_size": lambda: S.build_index(database, "ivf", nlist=4, train_size=2),
        "refine": lambda: S.build_index(database, "exact", refine=2),
        "query_emb must have dim": lambda: S.search(exact, database[:, :16], 3),
        "k must be": lambda: S.search(exact, database, 0),
        "nprobe must be between": lambda: S.set_nprobe(ivf, 5),
        "nprobe must be between 1 and nlist=4": lambda: S.build_index(database, "ivf", nlist=4, nprobe=5),
        "nprobe only applies": lambda: S.set_nprobe(exact, 2),
        "approx_ids": lambda: S.recall_of_exact_topk(ids[:, :3], ids, 4),
    }


@pytest.mark.parametrize("message", list(_bad_calls()))
def test_bad_arguments_raise_value_error_naming_them(message):
    with pytest.raises(ValueError, match=message):
        _bad_calls()[message]()


def test_type_error_for_lists():
    with pytest.raises(TypeError, match="db_emb"):
        S.build_index([[1.0, 0.0]])
