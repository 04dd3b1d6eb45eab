"""The README's results are notebook 04's committed outputs, character for character."""
from __future__ import annotations

import json

import pytest

from helpers import config

NOTEBOOK = config.REPO_ROOT / "notebooks" / "04_two_stage_training.ipynb"
README = config.REPO_ROOT / "README.md"
QUOTED = {
    "the chosen settings": ("report.chosen_sentence(", "Every study had"),
    "the table over seeds": ("Markdown(shown.to_markdown())", ""),
    "the verdicts": ("report.claim_sentence(claim, row)", ""),
    "the verdicts' changes": ("report.verdict_changes(", ""),
    "the checks of the protocol": ("report.kept_last_share(comparison)", ""),
}
"""What the README quotes: a code that identifies the notebook cell, and how its Markdown output begins."""


def markdown_output(code: str, begins: str = "") -> str:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    outputs = ["".join(o["data"]["text/markdown"]) for c in cells if code in "".join(c["source"])
               for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    outputs = [text for text in outputs if text.startswith(begins)]
    assert len(outputs) == 1, f"expected one Markdown output of the cell with {code!r}, found {len(outputs)}"
    return outputs[0]


@pytest.mark.parametrize("what", QUOTED)
def test_readme_quotes_notebook_04(what):
    section = README.read_text(encoding="utf-8").split("## Results on the synthetic stand-in", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert markdown_output(*QUOTED[what]).strip() in section, f"the README's {what} differ from notebook 04's output"
