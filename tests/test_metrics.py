"""Retrieval metrics against scikit-learn, per-query loops and hand-worked rankings."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from helpers import metrics as M


def _random_problem(n_queries=25, n_db=300, dim=16, max_relevant=12, seed=0):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    database = rng.standard_normal((n_db, dim)).astype(np.float32)
    ground_truth = [rng.choice(n_db, size=rng.integers(1, max_relevant + 1), replace=False)
                    for _ in range(n_queries)]
    # pull each query towards its relevant items so APs spread over (0, 1]
    for q, gt in enumerate(ground_truth):
        queries[q] += 0.6 * database[gt].mean(axis=0)
    return queries, database, ground_truth


def _scores(queries, database):
    q = F.normalize(torch.as_tensor(queries), dim=1)
    d = F.normalize(torch.as_tensor(database), dim=1)
    return (q @ d.T).numpy()


def _loop_average_precision(scores_row, relevant, mode):
    """Reference: walk one query's ranking item by item."""
    relevant = set(int(i) for i in relevant)
    order = np.argsort(-scores_row, kind="stable")
    total, hits = 0.0, 0
    for rank, item in enumerate(order):
        if int(item) not in relevant:
            continue
        after = (hits + 1) / (rank + 1)
        if mode == "standard":
            total += after
        else:
            before = hits / rank if rank > 0 else 1.0
            total += (before + after) / 2
        hits += 1
    return total / len(relevant)


def _circle(angles):
    """2-D unit vectors; a query at angle 0 ranks them by increasing angle."""
    angles = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- AP
def test_standard_ap_matches_sklearn():
    queries, database, ground_truth = _random_problem()
    scores = _scores(queries, database)
    aps = M.average_precision(queries, database, ground_truth, mode="standard")
    for q, gt in enumerate(ground_truth):
        labels = np.zeros(len(database), dtype=int)
        labels[gt] = 1
        assert aps[q] == pytest.approx(average_precision_score(labels, scores[q]), abs=1e-9)
    assert 0.05 < aps.mean() < 0.95  # a non-trivial problem


# five database items at increasing angle: the query at angle 0 ranks them 0, 1, 2, 3, 4
FIVE = _circle([0.1, 0.2, 0.3, 0.4, 0.5])
QUERY = _circle([0.0])


@pytest.mark.parametrize("relevant, trapezoid, standard", [
    # hits at 0-based ranks 0 and 2, 2 relevant:
    #   hit 0 at r=0: p0 = 1, p1 = 1/1 -> (1 + 1)/2 * 1/2 = 0.5
    #   hit 1 at r=2: p0 = 1/2, p1 = 2/3 -> (1/2 + 2/3)/2 * 1/2 = 7/24
    #   trapezoid = 0.5 + 7/24 = 19/24; standard = (1 + 2/3) / 2 = 5/6
    ([0, 2], 19 / 24, 5 / 6),
    # one relevant at r=2: p0 = 0/2, p1 = 1/3 -> trapezoid 1/6; standard 1/3
    ([2], 1 / 6, 1 / 3),
    # hits at r=1 and r=4, 2 relevant:
    #   hit 0: p0 = 0/1, p1 = 1/2 -> 1/4 * 1/2 = 1/8
    #   hit 1: p0 = 1/4, p1 = 2/5 -> (1/4 + 2/5)/2 * 1/2 = 0.1625
    #   trapezoid = 0.125 + 0.1625 = 0.2875; standard = (1/2 + 2/5) / 2 = 0.45
    ([1, 4], 0.2875, 0.45),
    # a perfect ranking scores 1 in both modes
    ([0, 1, 2], 1.0, 1.0),
    ([0, 1, 2, 3, 4], 1.0, 1.0),
])
def test_hand_worked_rankings(relevant, trapezoid, standard):
    gt = [np.array(relevant)]
    assert M.average_precision(QUERY, FIVE, gt, mode="trapezoid")[0] == pytest.approx(trapezoid)
    assert M.average_precision(QUERY, FIVE, gt, mode="standard")[0] == pytest.approx(standard)


def test_relevant_order_in_ground_truth_and_duplicates_do_not_matter():
    a = M.average_precision(QUERY, FIVE, [np.array([2, 0])])
    b = M.average_precision(QUERY, FIVE, [[0, 2, 2, 0]])
    assert a[0] == pytest.approx(19 / 24) and b[0] == pytest.approx(19 / 24)


@pytest.mark.parametrize("mode", M.AP_MODES)
def test_vectorised_map_equals_per_query_loop(mode):
    queries, database, ground_truth = _random_problem(n_queries=30, n_db=400, seed=3)
    scores = _scores(queries, database)
    expected = np.array([_loop_average_precision(scores[q], gt, mode) for q, gt in enumerate(ground_truth)])
    mean_ap, aps = M.mean_average_precision(queries, database, ground_truth, mode=mode)
    np.testing.assert_allclose(aps, expected, rtol=1e-12)
    assert mean_ap == pytest.approx(expected.mean())


def test_chunked_computation_equals_one_piece(monkeypatch):
    queries, database, ground_truth = _random_problem(n_queries=17, n_db=120, seed=4)
    whole = M.evaluate(queries, database, ground_truth)
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 3 * 120 + 7)  # chunks of 3 queries, the last one short
    assert M.evaluate(queries, database, ground_truth) == pytest.approx(whole)
    full_ranking = M.similarity_ranking(queries, database)
    np.testing.assert_array_equal(full_ranking, np.argsort(-_scores(queries, database), axis=1, kind="stable"))


def test_ties_keep_lower_database_position_first():
    # items 0 and 1 are identical, so their scores tie exactly; item 2 is farther
    database = _circle([0.3, 0.3, 0.6])
    assert M.similarity_ranking(QUERY, database).tolist() == [[0, 1, 2]]
    # relevant item 1 is ranked second, behind its tied twin: standard AP = 1/2
    assert M.average_precision(QUERY, database, [[1]], mode="standard")[0] == pytest.approx(0.5)
    assert M.recall_at_k(QUERY, database, [[1]], ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_many_ties_follow_database_order():
    # 300 items on only three distinct points: within each tie the lower position comes first
    group = np.random.default_rng(1).integers(0, 3, size=300)
    database = _circle([0.2, 0.5, 0.9])[group]
    expected = np.lexsort((np.arange(300), group))  # by angle group, then by position
    np.testing.assert_array_equal(M.similarity_ranking(QUERY, database)[0], expected)
    relevant = np.flatnonzero(group == 1)[::7]
    ranks = np.flatnonzero(np.isin(expected, relevant))
    standard = np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1))
    assert M.average_precision(QUERY, database, [relevant], mode="standard")[0] == pytest.approx(standard)


def test_inputs_numpy_torch_and_unnormalised_agree():
    queries, database, ground_truth = _random_problem(n_queries=10, n_db=80, seed=5)
    ref = M.evaluate(queries, database, ground_truth)
    assert M.evaluate(torch.from_numpy(queries), torch.from_numpy(database), ground_truth) == ref
    scaled = M.evaluate(queries * 7.5, database * np.linspace(0.1, 3, len(database))[:, None],
                        [torch.as_tensor(g) for g in ground_truth])
    assert scaled == pytest.approx(ref)
    assert M.evaluate(queries.astype(np.float64), database, ground_truth) == pytest.approx(ref)


# --------------------------------------------------------------------------- Recall@K
def test_recall_at_k_matches_loop_and_caps_k():
    queries, database, ground_truth = _random_problem(n_queries=40, n_db=60, seed=6)
    scores = _scores(queries, database)
    ks = (1, 2, 4, 8, 16, 32, 1000)
    got = M.recall_at_k(queries, database, ground_truth, ks=ks)
    assert list(got) == list(ks)
    for k in ks:
        hits = 0
        for q, gt in enumerate(ground_truth):
            top = np.argsort(-scores[q], kind="stable")[:k]
            hits += any(int(i) in set(gt.tolist()) for i in top)
        assert got[k] == pytest.approx(hits / len(ground_truth))
    assert got[1000] == 1.0  # capped at the database size: every query has a relevant item
    assert 0 < got[1] < got[32] <= 1


def test_evaluate_row():
    queries, database, ground_truth = _random_problem(n_queries=12, n_db=90, seed=7)
    row = M.evaluate(queries, database, ground_truth, ks=(1, 5), name="double margin")
    assert list(row) == ["name", "mAP (trapezoid)", "mAP (standard)", "R@1", "R@5", "MAP@R", "R-Precision", "P@1"]
    assert row["name"] == "double margin"
    assert row["mAP (trapezoid)"] == pytest.approx(M.mean_average_precision(queries, database, ground_truth)[0])
    assert row["mAP (standard)"] == pytest.approx(
        M.mean_average_precision(queries, database, ground_truth, mode="standard")[0])
    recall = M.recall_at_k(queries, database, ground_truth, ks=(1, 5))
    assert (row["R@1"], row["R@5"]) == (recall[1], recall[5])
    assert "name" not in M.evaluate(queries, database, ground_truth)


@pytest.mark.parametrize("ground_truth, message", [
    ([[0], [], [1]], "query 1 has an empty ground truth"),
    ([[0], [1]], "3 queries"),
    ([[0], [5], [1]], "query 1 names database position 5"),
    ([[0], [-1], [1]], "query 1 names database position -1"),
    ([[0], [1.0], [1]], "integer"),
])
def test_ground_truth_validation(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        M.mean_average_precision(np.eye(3, 2, dtype=np.float32), FIVE, ground_truth)


def test_other_validation():
    with pytest.raises(ValueError, match="same dim"):
        M.average_precision(np.ones((2, 3)), FIVE, [[0], [1]])
    with pytest.raises(ValueError, match="mode must be"):
        M.average_precision(QUERY, FIVE, [[0]], mode="interpolated")
    with pytest.raises(ValueError, match="ks must be"):
        M.recall_at_k(QUERY, FIVE, [[0]], ks=(0, 1))
    with pytest.raises(ValueError, match="NaN"):
        M.average_precision(np.array([[np.nan, 1.0]]), FIVE, [[0]])


# --------------------------------------------------------------------------- PCA sweep
def test_pca_sweep_caps_dims_and_full_dim_equals_centred_metrics():
    queries, database, ground_truth = _random_problem(n_queries=20, n_db=150, dim=24, seed=8)
    table = M.pca_sweep(queries, database, ground_truth, dims=(4, 8, 16, 32, 64))
    assert table["dim"].tolist() == [4, 8, 16, 24]
    assert list(table.columns) == ["dim", "mAP (trapezoid)", "mAP (standard)", "R@1", *M.REALITY_CHECK,
                                   "explained variance"]
    assert table["explained variance"].is_monotonic_increasing
    assert table["explained variance"].iloc[-1] == pytest.approx(1.0)
    # at full dim PCA centres on the database mean and rotates: compare with centring alone
    mean = database.astype(np.float64).mean(axis=0)
    centred = M.evaluate((queries - mean).astype(np.float32), (database - mean).astype(np.float32),
                         ground_truth, ks=(1,))
    full = table.iloc[-1]
    for key in ("mAP (trapezoid)", "mAP (standard)", "R@1"):
        assert full[key] == pytest.approx(centred[key], abs=1e-6)


def test_pca_sweep_is_rotation_invariant_and_respects_fit_on():
    queries, database, ground_truth = _random_problem(n_queries=15, n_db=120, dim=12, seed=9)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 12)))
    dims = (2, 4, 8)
    plain = M.pca_sweep(queries, database, ground_truth, dims=dims)
    rotated = M.pca_sweep(queries @ rotation, database @ rotation, ground_truth, dims=dims)
    np.testing.assert_allclose(plain.to_numpy(), rotated.to_numpy(), atol=1e-5)
    # fitting on 6 samples caps the dimension at 6
    small = M.pca_sweep(queries, database, ground_truth, dims=dims, fit_on=database[:6])
    assert small["dim"].tolist() == [2, 4, 6]


# --------------------------------------------------------------------------- distance pairs
def test_distance_pairs_pick_same_and_different_categories():
    labels = np.repeat(np.arange(5), [2, 3, 4, 1, 6])
    one_hot = np.eye(5, dtype=np.float32)[labels]  # every member of a category at the same point
    distances, y = M.distance_pairs(one_hot, labels, n_pairs=200, seed=1)
    assert distances.shape == y.shape == (400,)
    assert y.tolist() == [1] * 200 + [0] * 200
    np.testing.assert_allclose(distances[:200], 0.0, atol=1e-6)
    np.testing.assert_allclose(distances[200:], math.sqrt(2), atol=1e-6)
    again = M.distance_pairs(one_hot, labels, n_pairs=200, seed=1)
    np.testing.assert_array_equal(distances, again[0])


def test_distance_pairs_never_pair_an_item_with_itself():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((30, 8))
    labels = rng.integers(0, 4, size=30)
    distances, y = M.distance_pairs(emb, labels, n_pairs=500)
    assert (distances[y == 1] > 1e-3).all()
    # distances of normalised embeddings lie in [0, 2]
    assert distances.min() >= 0 and distances.max() <= 2 + 1e-9
    with pytest.raises(ValueError, match="single category"):
        M.distance_pairs(emb, np.zeros(30), n_pairs=5)
    with pytest.raises(ValueError, match="one item"):
        M.distance_pairs(emb[:3], [0, 1, 2], n_pairs=5)


def test_relevance_matrix_matches_a_loop():
    rng = np.random.default_rng(3)
    n_db, n_q = 30, 7
    gt = [np.sort(rng.choice(n_db, size=rng.integers(1, 6), replace=False)) for _ in range(n_q)]
    ranking = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    got = M.relevance_matrix(ranking[:, :10], gt)
    expected = np.array([[int(ranking[q, r]) in set(gt[q].tolist()) for r in range(10)] for q in range(n_q)])
    assert got.shape == (n_q, 10)
    np.testing.assert_array_equal(got, expected)


def test_confused_pairs_counts_wrong_results_like_a_loop():
    rng = np.random.default_rng(4)
    db_labels = rng.integers(0, 4, size=40)
    q_labels = rng.integers(0, 4, size=12)
    ranking = np.stack([rng.permutation(40) for _ in range(12)])
    table = M.confused_pairs(ranking, q_labels, db_labels, k=5)
    expected = {}
    for q in range(12):
        for i in ranking[q, :5]:
            if db_labels[i] != q_labels[q]:
                key = (int(q_labels[q]), int(db_labels[i]))
                expected[key] = expected.get(key, 0) + 1
    got = {(int(a), int(b)): int(c) for a, b, c in table[["query_label", "result_label", "count"]].itertuples(index=False)}
    assert got == expected
    assert table["count"].is_monotonic_decreasing
    slots = {lab: 5 * int((q_labels == lab).sum()) for lab in set(q_labels.tolist())}
    for row in table.itertuples():
        assert row.share == pytest.approx(row.count / slots[row.query_label])


def _labelled_problem(seed=0, n_classes=7, n_db=140, n_queries=30, dim=12):
    """Queries and database with class labels (relevant = same class), clustered so scores spread."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    db_labels = rng.integers(0, n_classes, n_db)
    q_labels = rng.integers(0, n_classes, n_queries)
    database = (centres[db_labels] + 1.3 * rng.standard_normal((n_db, dim))).astype(np.float32)
    queries = (centres[q_labels] + 1.3 * rng.standard_normal((n_queries, dim))).astype(np.float32)
    ground_truth = [np.flatnonzero(db_labels == label) for label in q_labels]
    return queries, database, q_labels, db_labels, ground_truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reality_check_metrics_match_pytorch_metric_learning(seed):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    queries, database, q_labels, db_labels, ground_truth = _labelled_problem(seed)
    row = M.evaluate(queries, database, ground_truth)
    calculator = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
                                    k="max_bin_count")
    theirs = calculator.get_accuracy(F.normalize(torch.as_tensor(queries), dim=1), torch.as_tensor(q_labels),
                                     F.normalize(torch.as_tensor(database), dim=1), torch.as_tensor(db_labels),
                                     ref_includes_query=False)
    assert row["MAP@R"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert row["R-Precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert row["P@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert 0.05 < row["MAP@R"] < 0.95 and row["P@1"] == pytest.approx(row["R@1"])


def test_reality_check_metrics_by_hand():
    # one query, R = 2 relevant items ranked 1st and 3rd of 4
    hits = (np.array([0, 0]), np.array([0, 2]), np.array([2]))
    values = {name: float(v[0]) for name, v in M.reality_check_from_ranks(*hits).items()}
    assert values == {"MAP@R": pytest.approx((1 / 1) / 2), "R-Precision": 0.5, "P@1": 1.0}
    # ranked 2nd and 3rd: P@1 = 0, top-2 holds one of them, MAP@R = (1/2) / 2
    hits = (np.array([0, 0]), np.array([1, 2]), np.array([2]))
    values = {name: float(v[0]) for name, v in M.reality_check_from_ranks(*hits).items()}
    assert values == {"MAP@R": pytest.approx(0.25), "R-Precision": 0.5, "P@1": 0.0}


# --------------------------------------------------------------------------- metrics from ranked ids
def _loop_truncated_ap(ranked, relevant, mode):
    """Reference: walk a top-k list; relevant items not in it add nothing."""
    relevant = set(int(i) for i in relevant)
    total, hits = 0.0, 0
    for rank, item in enumerate(ranked):
        if int(item) not in relevant:
            continue
        after = (hits + 1) / (rank + 1)
        before = 1.0 if rank == 0 else hits / rank
        total += after if mode == "standard" else (before + after) / 2
        hits += 1
    return total / len(relevant)


def test_metrics_from_ids_hand_worked():
    # query 0: relevant {3, 7, 9}; ranked 3, 5, 7 (9 not retrieved)
    # query 1: relevant {2}; ranked 4, -1 (no result), 0: nothing relevant retrieved
    ids = np.array([[3, 5, 7], [4, -1, 0]])
    ground_truth = [np.array([9, 7, 3]), np.array([2])]
    _, aps = M.mean_average_precision_from_ids(ids, ground_truth, n_db=10, mode="standard")
    np.testing.assert_allclose(aps, [(1 / 1 + 2 / 3) / 3, 0.0])
    _, aps = M.mean_average_precision_from_ids(ids, ground_truth, n_db=10, mode="trapezoid")
    np.testing.assert_allclose(aps, [((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 3, 0.0])
    assert M.recall_at_k_from_ids(ids, ground_truth, ks=(1, 3)) == {1: 0.5, 3: 0.5}
    row = M.evaluate_ids(ids, ground_truth, ks=(1, 3, 4), name="top 3")
    # R@4 needs a fourth id: left out; MAP@R of query 0 (R = 3): hits at ranks 1 and 3 -> (1/1 + 2/3) / 3
    assert list(row) == ["name", "mAP (trapezoid)", "mAP (standard)", "R@1", "R@3", *M.REALITY_CHECK]
    assert row["mAP (standard)"] == pytest.approx((1 + 2 / 3) / 3 / 2)
    assert row["MAP@R"] == pytest.approx((1 + 2 / 3) / 3 / 2)
    assert row["R-Precision"] == pytest.approx(2 / 3 / 2) and row["P@1"] == 0.5 == row["R@1"]


def test_evaluate_ids_of_a_whole_database_ranking_equals_evaluate():
    queries, database, ground_truth = _random_problem(n_queries=15, n_db=40, seed=8)
    ground_truth[0] = np.concatenate([ground_truth[0], ground_truth[0][:1]])  # a duplicate counts once
    scores = _scores(queries, database)
    ids = np.argsort(-scores, axis=1, kind="stable")  # every query ranks the whole database
    ks = (1, 4, 32, 100)
    want = M.evaluate(queries, database, ground_truth, ks=ks, name="dense")
    got = M.evaluate_ids(ids, ground_truth, ks=ks, name="dense", n_db=len(database))
    assert list(got) == list(want) and got["R@100"] == want["R@100"] == 1.0  # K above n_db capped
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0.1 < got["mAP (trapezoid)"] < 0.9
    # without n_db the rows might be a top-40 of a larger database: no R@100
    top_40 = M.evaluate_ids(ids, ground_truth, ks=ks)
    assert "R@100" not in top_40 and top_40["R@32"] == want["R@32"]


@pytest.mark.parametrize("mode", M.AP_MODES)
def test_evaluate_ids_of_a_top_k_list(mode):
    queries, database, ground_truth = _random_problem(seed=1)
    k = 15
    ids = M.similarity_ranking(queries, database, k)
    row = M.evaluate_ids(ids, ground_truth, n_db=len(database))
    loop = np.mean([_loop_truncated_ap(r, gt, mode) for r, gt in zip(ids, ground_truth)])
    assert row[f"mAP ({mode})"] == pytest.approx(loop, abs=1e-12)
    full = M.evaluate(queries, database, ground_truth)
    assert row[f"mAP ({mode})"] < full[f"mAP ({mode})"] - 1e-6  # some relevant items fall outside the top 15
    assert {key: row[key] for key in ("R@1", "R@2", "R@4", "R@8", "P@1")} == \
        {key: full[key] for key in ("R@1", "R@2", "R@4", "R@8", "P@1")}
    assert "R@16" not in row and row["MAP@R"] <= full["MAP@R"] and row["R-Precision"] <= full["R-Precision"]


def test_relevance_matrix_marks_no_result_as_irrelevant():
    got = M.relevance_matrix(np.array([[2, -1, 0], [1, 0, 2]]), [[0, 2], [2]])
    np.testing.assert_array_equal(got, [[True, False, True], [False, False, True]])


def _bad_id_calls():
    ids = np.tile(np.arange(5), (2, 1))
    gt = [np.array([1]), np.array([2])]
    return {
        "mode": lambda: M.mean_average_precision_from_ids(ids, gt, 10, mode="interpolated"),
        "ids must hold": lambda: M.mean_average_precision_from_ids(ids + 8, gt, 10),
        "at most n_db": lambda: M.mean_average_precision_from_ids(ids, gt, 4),
        "n_db must be": lambda: M.evaluate_ids(ids, gt, n_db=0),
        "ids repeats": lambda: M.mean_average_precision_from_ids(np.zeros((2, 2), int), gt, 10),
        "ids must be a 2-D": lambda: M.evaluate_ids(ids[0], gt),
        "ground_truth has": lambda: M.mean_average_precision_from_ids(ids, gt[:1], 10),
        "query 1 names database position 12": lambda: M.evaluate_ids(ids, [[1], [12]], n_db=10),
        "query 0 names database position -2": lambda: M.recall_at_k_from_ids(ids, [[-2], [1]]),
        "ks must be <=": lambda: M.recall_at_k_from_ids(ids, gt, ks=(1, 6), n_db=10),
        "ks must be a non-empty": lambda: M.evaluate_ids(ids, gt, ks=()),
    }


@pytest.mark.parametrize("message", list(_bad_id_calls()))
def test_bad_ids_raise_value_error_naming_them(message):
    with pytest.raises(ValueError, match=message):
        _bad_id_calls()[message]()
