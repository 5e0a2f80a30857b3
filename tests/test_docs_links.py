"""The repository cites only itself: no path out of the checkout (the old external design
note), and every section number cited (``spec §N``, ``docs/spec.md §N.M``, a bare ``§N``)
is a section of docs/spec.md."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "docs", "spec.md")
SUFFIXES = (".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".txt")
OUTSIDE = re.compile(r"\.\./shared|shared/design|design/hgrn\.md")
CITATION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
THIS = os.path.relpath(os.path.abspath(__file__), ROOT)


def _tracked_files():
    """Text files under version control (git ls-files; a walk when git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=30).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
    if not names:  # e.g. an sdist or a tree without .git
        skip = {".git", ".venv", ".venv-ci", "build", "dist", "output", "__pycache__"}
        for base, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(base, f), ROOT) for f in files]
    if os.path.relpath(SPEC, ROOT) not in names:
        names.append(os.path.relpath(SPEC, ROOT))  # checked even before it is committed
    # this file is left out: it spells the patterns it forbids and bad citations on purpose
    return sorted({n for n in names if n.endswith(SUFFIXES) and n != THIS
                   and os.path.isfile(os.path.join(ROOT, n))})


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
        return f.read()


def _spec_sections():
    return set(HEADING.findall(_read(os.path.relpath(SPEC, ROOT))))


def test_spec_exists_with_numbered_sections():
    sections = _spec_sections()
    assert {"1", "2", "3", "4", "5", "6", "7"} <= sections, sorted(sections)
    assert len(_read("docs/spec.md").splitlines()) < 400


def test_nothing_points_outside_the_repository():
    bad = []
    for name in _tracked_files():
        for i, line in enumerate(_read(name).splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "references outside the repository:\n" + "\n".join(bad)


def test_every_cited_section_exists():
    sections = _spec_sections()
    bad = []
    for name in _tracked_files():
        for i, line in enumerate(_read(name).splitlines(), 1):
            for number in CITATION.findall(line):
                if number not in sections:
                    bad.append(f"{name}:{i}: §{number} ({line.strip()})")
    assert not bad, ("sections cited but missing from docs/spec.md "
                     f"(has {sorted(sections)}):\n" + "\n".join(bad))


@pytest.mark.parametrize("text, ok", [("spec §5.2", True), ("docs/spec.md §3.4", True),
                                      ("§3/§4.1", True), ("spec §9", False), ("(§1.7)", False),
                                      ("see ../shared/design/hgrn.md", False)])
def test_the_checks_catch_bad_text(text, ok):
    sections = _spec_sections()
    good = all(n in sections for n in CITATION.findall(text)) and not OUTSIDE.search(text)
    assert good == ok
