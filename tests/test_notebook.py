"""The notebook plumbing: setup(), the final state of progress bars in saved notebooks, make verify."""
from __future__ import annotations

import io
import json

from helpers import config, notebook, progress
from helpers.machinery import finish, verify


def test_setup_resolves_the_profile_and_prints_versions(capsys, monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    session = notebook.setup(seed=3, ret_epochs=5)
    assert session.profile == config.get_profile("smoke", ret_epochs=5) and session.seed == 3
    printed = capsys.readouterr().out
    assert printed.startswith("profile: smoke | seed: 3 | device: ") and "torch " in printed


def test_a_bar_keeps_only_its_final_state():
    stream = io.StringIO()
    for _ in progress.bar(range(5), desc="work", file=stream, mininterval=0):
        pass
    written = stream.getvalue()
    assert written.count("\r") >= 5                       # it redrew itself
    final = finish.collapse_carriage_returns(written)
    assert final.count("\n") <= 1 and "5/5" in final and "0/5" not in final


def test_terminal_replay_of_redraws_clears_and_cursor_moves():
    text = "a: 1\ra: 2\nb: 1\r\x1b[Aa: 3\n\nkept\nx\r   \r\n"
    assert finish.collapse_carriage_returns(text) == "a: 3\nb: 1\nkept\n"


def test_finalize_merges_streams_and_keeps_final_lines(tmp_path):
    book = {"cells": [{"cell_type": "code", "id": "a", "source": [], "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["\rbar:  0%| 0/2"]},
        {"output_type": "stream", "name": "stdout", "text": ["\rbar: 100%| 2/2\n"]},
        {"output_type": "stream", "name": "stdout", "text": ["result 42\n"]},
        {"output_type": "display_data", "data": {"text/plain": ["fig"]}, "metadata": {}},
        {"output_type": "stream", "name": "stderr", "text": ["warning\n"]}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "book.ipynb"
    path.write_text(json.dumps(book))
    assert finish.finalize(path) > 0
    outputs = json.loads(path.read_text())["cells"][0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "stream"]
    assert "".join(outputs[0]["text"]) == "bar: 100%| 2/2\nresult 42\n"
    assert "".join(outputs[2]["text"]) == "warning\n"
    assert finish.finalize(path) == 0                  # nothing left to collapse


def test_finalize_keeps_the_lines_of_nested_bars_split_over_outputs(tmp_path):
    stream = io.StringIO()
    for _ in progress.bar(range(3), desc="outer", file=stream, mininterval=0):
        for _ in progress.bar(range(2), desc="inner", file=stream, mininterval=0):
            pass
    text = stream.getvalue()
    assert finish.CURSOR_UP in text
    pieces = [text[i:i + 97] for i in range(0, len(text), 97)]  # flushed in arbitrary chunks
    book = {"cells": [{"cell_type": "code", "id": "a", "source": [], "metadata": {}, "execution_count": 1,
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": p} for p in pieces]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nested.ipynb"
    path.write_text(json.dumps(book))
    finish.finalize(path)
    outputs = json.loads(path.read_text())["cells"][0]["outputs"]
    assert len(outputs) == 1 and "".join(outputs[0]["text"]) == finish.collapse_carriage_returns(text)
    lines = "".join(outputs[0]["text"]).splitlines()
    assert [line.split(":")[0] for line in lines] == ["inner", "inner", "inner", "outer"]
    assert all("100%" in line for line in lines)


# --------------------------------------------------------------------------- make verify

def _book(tmp_path, name, cells):
    """A notebook file whose code cells have ``(source, [output texts])``; a source ``"bench()"`` is tagged ``verify-skip``."""
    book = {"cells": [{"cell_type": "code", "source": source, "execution_count": 1,
                       "metadata": {"tags": [verify.SKIP_TAG]} if source == "bench()" else {},
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": text} for text in texts]}
                      for source, texts in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / name
    path.write_text(json.dumps(book), encoding="utf-8")
    return path


def test_verify_masks_timings_but_not_results():
    assert verify.normalise("trained in 12.3 s, 4 min; 83 ms") == verify.normalise("trained in 9.1 s, 7 min; 2 ms")
    assert verify.normalise("a\nepoch 3: 100%|####| 5/5 [00:12<00:00, 2.31batch/s]\nb") == verify.normalise("a\nb")
    assert verify.normalise("single: 9 iterations (loaded from cache)") == verify.normalise("single: 9 iterations")
    assert verify.normalise("from cache: True") == verify.normalise("from cache: False")
    assert verify.normalise("test mAP 0.556") != verify.normalise("test mAP 0.557")
    assert verify.normalise("15 epochs") != verify.normalise("14 epochs")


def test_verify_reports_the_cells_whose_text_differs(tmp_path):
    committed = _book(tmp_path, "a.ipynb", [("x = 1", ["mAP 0.500 in 3.2 s\n"]), ("bench()", ["9 QPS\n"]),
                                            ("y", ["R@1 0.70\n"])])
    same = _book(tmp_path, "b.ipynb", [("x = 1", ["mAP 0.500 in 7.9 s\n"]), ("bench()", ["3 QPS\n"]),
                                       ("y", ["R@1 0.70\n"])])
    other = _book(tmp_path, "c.ipynb", [("x = 1", ["mAP 0.501 in 3.2 s\n"]), ("bench()", ["9 QPS\n"]),
                                        ("y", ["R@1 0.70\n"])])
    assert verify.compare(committed, same) == []
    report = verify.compare(committed, other)
    assert len(report) == 1 and "cell 0" in report[0] and "-mAP 0.500" in report[0] and "+mAP 0.501" in report[0]
