"""Shared helpers for benchmark scripts: data paths, machine info, BENCHMARKS.md records."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, {platform.system()}"


def record(title: str, body: str) -> None:
    """Append one dated section (command, machine, results) to BENCHMARKS.md."""
    script = Path(sys.argv[0]).resolve()
    rel = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else script.as_posix()
    cmd = "python " + " ".join([rel, *sys.argv[1:]]) + " (from the repository root)"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title}\n\n- date: {now}\n- command: `{cmd}`\n- machine: {machine()}\n\n{body.strip()}\n"
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\nEvery figure in the README comes from a script in `benchmarks/`; "
                                 "each section below is one run, newest last.\n")
    with BENCHMARKS_MD.open("a") as f:
        f.write(section)


def md_table(rows: list[dict[str, object]], cols: list[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
