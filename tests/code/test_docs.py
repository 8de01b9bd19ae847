"""The README is the first screen; the rest is in docs/, and every link between them leads somewhere."""

import re

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings."""
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_readme_is_one_screenful_of_what_a_new_user_needs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for needed in ("## Quick start", "python -m pytest", "dvc repro", "## The pipeline", "## Documentation"):
        assert needed in text, needed
    for stage in ("download", "split", "extract-features", "train-head", "fine-tune", "evaluate"):
        assert f"| {stage} |" in text, stage


def test_every_link_leads_to_a_file_and_a_heading_that_exist():
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target} is not a file"
            if anchor:
                assert anchor in _anchors(linked.read_text()), f"{page.name}: {target} names no heading"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    assert {page.name for page in PAGES[1:]} == set(re.findall(r"\]\(docs/([^)#]+)\)", readme))
