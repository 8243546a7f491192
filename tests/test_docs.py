"""The manuals hold together: every relative link in README.md and docs/*.md reaches a file,
and a #anchor a heading of it; and no tool writes into a tracked file by default."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANUALS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target), the text possibly across a line break; an optional title.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def outside_fences(text: str) -> list[str]:
    """The lines, with those of fenced code blocks (and the fences) blanked: no heading or
    link there. The line count is kept, so that messages can name a line."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        lines.append("" if fenced or FENCE.match(line) else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (markup and link targets gone),
    lower-cased, punctuation dropped (letters, digits, `_`, `-` and spaces stay), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[*`]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_fences(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """`file:line: target: why` for each relative link of a Markdown file that does not resolve."""
    # inline code spans blanked too: a link written as code is an example, not a link
    text = "\n".join(re.sub(r"`[^`\n]*`", "``", line) for line in outside_fences(path.read_text(encoding="utf-8")))
    problems = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        line = text.count("\n", 0, match.start()) + 1
        if not destination.exists():
            problems.append(f"{path.name}:{line}: {target}: no such file")
        elif anchor and (destination.is_dir() or anchor not in anchors(destination)):
            problems.append(f"{path.name}:{line}: {target}: no heading #{anchor} in {destination.name}")
    return problems


def test_the_github_slug_rules():
    assert slug("Offline assets (PyPI wheels)") == "offline-assets-pypi-wheels"
    assert slug("Search benchmark (repeated runs)") == "search-benchmark-repeated-runs"
    assert slug("`search_space` and `training`") == "search_space-and-training"
    assert slug("Tracking with Neptune and MLflow") == "tracking-with-neptune-and-mlflow"
    assert slug("What a run does, prints and writes") == "what-a-run-does-prints-and-writes"


def test_the_checker_finds_a_missing_file_a_missing_heading_and_nothing_else(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Adding an encoder\n\n## Notes\n\n## Notes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Local part\n\n"
        "[fine](other.md#adding-an-encoder), [fine, the second Notes](other.md#notes-1),\n"
        "[fine, here](#local-part), [fine, across a\nline break](other.md) and [out](https://example.org/x#y).\n"
        "[gone](missing.md) and ![gone too](images/none.png)\n"
        "[no such heading](other.md#adding-a-dataset) and [nor here](#elsewhere)\n"
        "```\n[in code](nowhere.md)\n```\n`[inline code](nowhere.md)`\n")
    assert broken_links(page) == [
        "page.md:8: missing.md: no such file",
        "page.md:8: images/none.png: no such file",
        "page.md:9: other.md#adding-a-dataset: no heading #adding-a-dataset in other.md",
        "page.md:9: #elsewhere: no heading #elsewhere in page.md",
    ]


def test_every_relative_link_of_the_manuals_resolves():
    assert len(MANUALS) > 1, "docs/*.md not found"
    problems = [problem for path in MANUALS for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def _default_out(name: str) -> Path:
    """Where `python -m <name>` writes when --out is not given."""
    module = importlib.import_module(name)
    args = module.build_parser().parse_args([])
    if name == "perf.search":  # --out has no argparse default there: --quick writes to a temporary folder
        return module.output_dir(args.out, args.quick)
    return Path(args.out)


@pytest.mark.parametrize("name", ["perf.perf", "perf.search", "perf.workers", "perf.screenshots"])
def test_no_tool_writes_into_a_tracked_folder_by_default(name):
    out = _default_out(name)
    assert not out.is_absolute(), f"{name}: --out {out} should be relative to the repository root"
    probe = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-inside-work-tree"],
                           capture_output=True, text=True, check=False)
    if probe.stdout.strip() != "true":
        pytest.skip("not a git work tree: nothing to ask git about")
    # A file inside the default --out: ignored by .gitignore, and not tracked (check-ignore
    # reports a tracked file as not ignored).
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(out / "RESULT.md")], check=False)
    assert ignored.returncode == 0, f"{name}: its default --out {out} is not ignored by git"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", str(out)],
                             capture_output=True, text=True, check=True).stdout
    assert not tracked, f"{name}: its default --out {out} holds tracked files:\n{tracked}"
