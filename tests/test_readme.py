"""The README's results are notebook 04's committed outputs, character for character."""
from __future__ import annotations

import json

import pytest

from helpers import config

NOTEBOOK = config.REPO_ROOT / "notebooks" / "04_two_stage_training.ipynb"
README = config.REPO_ROOT / "README.md"
QUOTED = {
    "the table over seeds": "Markdown(shown.to_markdown())",
    "the verdicts": "report.claim_sentence(claim, row)",
}
"""What the README quotes: a code that identifies the notebook cell whose Markdown output it holds."""


def markdown_output(code: str) -> str:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    outputs = ["".join(o["data"]["text/markdown"]) for c in cells if code in "".join(c["source"])
               for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert len(outputs) == 1, f"expected one Markdown output of the cell with {code!r}, found {len(outputs)}"
    return outputs[0]


@pytest.mark.parametrize("what", QUOTED)
def test_readme_quotes_notebook_04(what):
    section = README.read_text(encoding="utf-8").split("## Results on the synthetic stand-in", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert markdown_output(QUOTED[what]) in section, f"the README's {what} differ from notebook 04's output"
