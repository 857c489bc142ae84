"""Model cards: a saved model directory explains itself (data, settings, metrics, versions)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
TRACKED = ("shoprank", "torch", "transformers", "peft", "numpy", "pandas", "scikit-learn", "implicit",
           "lightgbm", "bm25s")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in TRACKED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_card(model_dir: Path) -> Path:
    """(Re)write README.md from config.json, training.json and any metrics-*.json beside them."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
    info = json.loads((d / "training.json").read_text()) if (d / "training.json").exists() else {}
    lines = [f"# {cfg.get('model', 'model')} for {info.get('task', 'an unknown task')}", ""]
    lines += ["Trained with shoprank. Load it with `shoprank.models.load_model(path)`; evaluate it with",
              "`shoprank evaluate --model PATH --data DATASET`.", ""]
    if info:
        lines += ["## Data", "", f"- dataset: `{info.get('dataset')}`", f"- split: {info.get('split')}"]
        for k, v in (info.get("split_sizes") or {}).items():
            lines.append(f"- {k} interactions: {v}")
        desc = info.get("data_summary") or {}
        for k in ("items", "users", "interactions", "judgments", "queries"):
            if k in desc:
                lines.append(f"- {k} in the dataset: {desc[k]}")
        lines += [f"- fit time: {info.get('fit_seconds')} s", ""]
    lines += ["## Settings", "", "```json", json.dumps(cfg.get("params", {}), indent=2, default=str), "```", ""]
    for f in sorted(d.glob("metrics-*.json")):
        m = json.loads(f.read_text())
        lines += [f"## Metrics ({f.stem.removeprefix('metrics-')} split)", ""]
        flat = m.get("metrics", m)
        ci = m.get("ci", {})
        lines += ["| metric | value | 95% CI |", "|---|---|---|"]
        for k, v in flat.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                c = ci.get(k) or m.get(f"{k}_ci")
                cis = f"[{_fmt(c[0])}, {_fmt(c[1])}]" if c and None not in c else ""
                lines.append(f"| {k} | {_fmt(v)} | {cis} |")
        lines.append("")
    lines += ["## Versions", ""]
    for k, v in (cfg.get("versions") or library_versions()).items():
        lines.append(f"- {k} {v}")
    (d / CARD_FILE).write_text("\n".join(lines) + "\n")
    return d / CARD_FILE
