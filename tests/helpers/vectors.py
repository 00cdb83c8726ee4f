"""The vendored test vectors (``tests/vectors/``): payloads from MultiSafepay's public docs.

Each file's source is in ``tests/vectors/README.md``. They live in the repository, so a clean
clone anywhere runs every test that reads them; a missing file is an error, never a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def vector_text(name: str) -> str:
    return (VECTORS / name).read_text(encoding="utf-8")


def vector_json(name: str) -> Any:
    return json.loads(vector_text(name))
