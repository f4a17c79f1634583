"""What the refusal tests check: that a run directory's files are unchanged (their hashes
before and after) and that a refusal is one line on stderr."""

import hashlib
from pathlib import Path


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) and its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    """The one line on stderr (asserted: one line, no traceback)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]
