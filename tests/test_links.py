"""Links between the project's documents: a moved or renamed file must not leave a dead link.

Relative links are resolved from the linking file; links to this repository on GitHub or Colab
(``.../memseg-tutorial/memseg-tutorial/blob/main/<path>``) must name a file of this checkout, since
that is what they will show once it is pushed.
"""

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

REPO_URL = re.compile(r"^https://(?:github\.com|colab\.research\.google\.com/github)/memseg-tutorial/"
                      r"memseg-tutorial/blob/main/(?P<path>[^#?]+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _documents() -> dict[Path, str]:
    texts = {path: path.read_text(encoding="utf-8")
             for path in [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md"))]}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts[path] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return texts


def _target(document: Path, link: str) -> Path | None:
    """The local file a link must name, or None for links elsewhere (other sites, anchors)."""
    match = REPO_URL.match(link)
    if match:
        return ROOT / match["path"]
    if re.match(r"^[a-z]+:", link) or link.startswith("#"):
        return None
    return document.parent / link.split("#")[0]


DOCUMENTS = _documents()


@pytest.mark.parametrize("document", list(DOCUMENTS), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_to_this_project_name_existing_files(document: Path):
    links = LINK.findall(DOCUMENTS[document])
    dead = [link for link in links if (target := _target(document, link)) is not None and not target.is_file()]
    assert not dead, f"dead links in {document.relative_to(ROOT)}: {dead}"


def test_the_link_check_sees_local_and_repository_links():
    readme = ROOT / "README.md"
    assert _target(readme, "notebooks/00_setup_and_data.ipynb") == ROOT / "notebooks/00_setup_and_data.ipynb"
    assert _target(readme, "https://github.com/memseg-tutorial/memseg-tutorial/blob/main/README.md#x") == readme
    assert _target(readme, "https://pytorch.org/") is None
    assert _target(readme, "#the-lessons") is None
    lesson = ROOT / "notebooks" / "08_training.ipynb"
    assert any(_target(lesson, link) == ROOT / "benchmarks" / "mtd_experiments.md"
               for link in LINK.findall(DOCUMENTS[lesson]))
