"""The README's results table must be the one notebook 04 committed, number for number."""
from __future__ import annotations

import json
import re
from html import unescape

import pandas as pd

from helpers import config

NOTEBOOK = config.REPO_ROOT / "notebooks" / "04_two_stage_training.ipynb"
README = config.REPO_ROOT / "README.md"
FINAL_TABLE_CODE = 'final = evaluation.results_table(test_emb, release.test.ground_truth, baseline="single, one-stage")'
VERDICT_CODE = "def compare(a: str, b: str) -> str:"
COLUMNS = ["mAP (trapezoid)", "mAP (standard)", "R@1", "R@2", "R@4", "R@8", "R@16", "R@32"]


def notebook_final_table() -> pd.DataFrame:
    """The final table as notebook 04's committed output prints it (rounded to 3 decimals)."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if c["cell_type"] == "code" and FINAL_TABLE_CODE in "".join(c["source"]))
    html = "".join(next(o for o in cell["outputs"] if "data" in o)["data"]["text/html"])
    header, body = html.split("</thead>", 1)
    columns = [unescape(c) for c in re.findall(r"<th>(.*?)</th>", header.split("</tr>", 1)[0])]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S):
        name = unescape(re.search(r"<th>(.*?)</th>", row).group(1))
        rows[name] = [unescape(v) for v in re.findall(r"<td>(.*?)</td>", row)]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns[-len(next(iter(rows.values()))):])


def readme_results_table() -> pd.DataFrame:
    """The markdown table under "## Results on the synthetic stand-in" in the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Results on the synthetic stand-in", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines[2:]]
    return pd.DataFrame(rows, columns=header).set_index(header[0])


def test_readme_results_are_notebook_04s():
    notebook = notebook_final_table()
    readme = readme_results_table()
    assert list(readme.index) == list(notebook.index)
    for column in COLUMNS:
        expected = [f"{float(v):.3f}" for v in notebook[column]]
        assert readme[column].tolist() == expected, column
    relative = next(c for c in notebook.columns if c.startswith("rel. to"))
    assert [re.sub("[−]", "-", v) for v in readme["rel."]] == notebook[relative].tolist()


def test_readme_quotes_notebook_04s_verdicts():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    verdicts = ["".join(o["data"]["text/markdown"]) for c in cells for o in c.get("outputs", [])
                if "data" in o and "text/markdown" in o["data"] and VERDICT_CODE in "".join(c["source"])]
    assert len(verdicts) == 1
    assert verdicts[0] in README.read_text(encoding="utf-8")

