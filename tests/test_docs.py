"""The documentation holds together: README.md is a user guide of at most 350 lines that starts with
the two fresh-machine commands (what CI and users run), and every relative link in README.md,
benchmarks/README.md and docs/*.md points at a file (and, with a #fragment, a heading) that exists in
the repository. Nothing links outside the repository (a clone has no ../shared)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 350
INSTALL_AND_DEMO = "python3 -m venv .venv && . .venv/bin/activate && pip install . && genreal demo"
INSTALL_AND_TEST = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev,train,kernels,cluster]" '
                    "torch==2.13.0 && pytest -q")

#: [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def _docs() -> list[Path]:
    return [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links are not parsed there)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(out))  # a code span may run over a line break


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    heads = [line.lstrip("#").strip() for line in _prose(path.read_text(encoding="utf-8")).splitlines()
             if re.match(r"^#{1,6} ", line)]
    return {slug(h) for h in heads}


def test_readme_is_a_short_guide_that_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    assert INSTALL_AND_DEMO in lines[:10] and INSTALL_AND_TEST in lines[:10]


def test_the_docs_pages_exist() -> None:
    for name in ("design.md", "model.md", "experiments.md"):
        assert (ROOT / "docs" / name).is_file(), name
    readme_links = links(README)
    for name in ("docs/design.md", "docs/model.md", "docs/experiments.md"):
        assert any(t.split("#")[0] == name for t in readme_links), f"README.md does not link {name}"


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    bad = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: …: not checked here
            continue
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        try:
            dest.relative_to(ROOT)
        except ValueError:
            bad.append(f"{target} (outside the repository)")
            continue
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target} (no heading #{fragment})")
    assert bad == []


def test_every_named_result_file_exists() -> None:
    """Result files named in prose or code spans (`benchmarks/latest/...`, `latest/...`) were not deleted."""
    bad = []
    for doc in _docs():
        for m in re.finditer(r"(?:benchmarks/)?latest/[\w./-]+\.(?:json|png|jpg)", doc.read_text(encoding="utf-8")):
            rel = m.group(0) if m.group(0).startswith("benchmarks/") else "benchmarks/" + m.group(0)
            if not (ROOT / rel).is_file():
                bad.append(f"{doc.relative_to(ROOT)}: {m.group(0)}")
    assert bad == []


def test_no_doc_points_outside_the_repository() -> None:
    for doc in _docs():
        assert "../shared" not in doc.read_text(encoding="utf-8"), doc


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [this](missing.md), `[not](code.md)` and ![a](pic.png).\n"
                    "```\n[fenced](nope.md)\n```\n")
    assert links(page) == ["missing.md", "pic.png"]
    assert slug("Why 25 dB is out of reach") == "why-25-db-is-out-of-reach"
    assert slug("Browser preview and headset (`genreal serve`)") == "browser-preview-and-headset-genreal-serve"
    assert "title" in anchors(page)
