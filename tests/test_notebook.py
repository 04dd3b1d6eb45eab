"""The notebook plumbing: setup() and the final state of progress bars in saved notebooks."""
from __future__ import annotations

import io
import json

from helpers import config, notebook, progress


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
    final = notebook.collapse_carriage_returns(written)
    assert final.count("\n") <= 1 and "5/5" in final and "0/5" not in final


def test_terminal_replay_of_redraws_clears_and_cursor_moves():
    text = "a: 1\ra: 2\nb: 1\r\x1b[Aa: 3\n\nkept\nx\r   \r\n"
    assert notebook.collapse_carriage_returns(text) == "a: 3\nb: 1\nkept\n"


def test_finalize_merges_streams_and_keeps_final_lines(tmp_path):
    book = {"cells": [{"cell_type": "code", "source": [], "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["\rbar:  0%| 0/2"]},
        {"output_type": "stream", "name": "stdout", "text": ["\rbar: 100%| 2/2\n"]},
        {"output_type": "stream", "name": "stdout", "text": ["result 42\n"]},
        {"output_type": "display_data", "data": {"text/plain": ["fig"]}, "metadata": {}},
        {"output_type": "stream", "name": "stderr", "text": ["warning\n"]}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "book.ipynb"
    path.write_text(json.dumps(book))
    assert notebook.finalize(path) > 0
    outputs = json.loads(path.read_text())["cells"][0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "stream"]
    assert "".join(outputs[0]["text"]) == "bar: 100%| 2/2\nresult 42\n"
    assert "".join(outputs[2]["text"]) == "warning\n"
    assert notebook.finalize(path) == 0                  # nothing left to collapse
