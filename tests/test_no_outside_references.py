"""The repository documents itself: no file it tracks points at notes that are not in it (the
design notes and MultiSafepay notes the project started from, a ``shared`` folder beside the
checkout). What a comment relied on from them is in README.md or docs/."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Spelled in pieces, so this file does not match itself.
FORBIDDEN = ("DESIGN" + ".md", "MULTISAFEPAY" + ".md", ".." + "/shared")
#: Where an untracked tree (no git) keeps what is not the project's own.
NOT_OURS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def tracked_files() -> list[Path]:
    """The files git tracks; without git (a tarball), every file but caches and the venv."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and not NOT_OURS.intersection(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


def references(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if any(name.lower() in line.lower() for name in FORBIDDEN)
    ]


def test_the_finder_sees_each_forbidden_reference() -> None:
    for name in FORBIDDEN:
        assert references(f"see {name.lower()} here\nclean line") == [
            (1, f"see {name.lower()} here")
        ]
    assert references("README.md and docs/simulator.md, shared state") == []


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = tracked_files()
    assert any(path.name == "README.md" for path in files)  # it looked at the repository
    found = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # images and other binaries
            continue
        found += [f"{path.relative_to(ROOT)}:{n}: {line}" for n, line in references(text)]
    assert not found, "references to notes outside the repository:\n" + "\n".join(found)
