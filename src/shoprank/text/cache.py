"""On-disk embedding cache keyed by (encoder fingerprint, text hash).

Encoding is the slow part on CPU (about 180 titles/s here), so a text is never encoded twice
by the same frozen encoder: SQLite holds one float32 vector per key, safe for several readers.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def text_key(fingerprint: str, text: str) -> bytes:
    return hashlib.blake2b(f"{fingerprint}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """Persistent map text -> vector for one encoder fingerprint."""

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self._db.commit()

    def get(self, texts: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for the cached texts and a mask of which were found."""
        keys = [text_key(self.fingerprint, t) for t in texts]
        out = np.zeros((len(texts), dim), np.float32)
        found = np.zeros(len(texts), bool)
        pos: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            pos.setdefault(k, []).append(i)
        uniq = list(pos)
        for s in range(0, len(uniq), 900):  # SQLite's bound-parameter limit
            chunk = uniq[s : s + 900]
            q = f"SELECT k, v FROM emb WHERE k IN ({','.join('?' * len(chunk))})"
            for k, v in self._db.execute(q, chunk):
                vec = np.frombuffer(v, dtype=np.float32)
                if vec.shape[0] != dim:
                    continue
                for i in pos[k]:
                    out[i] = vec
                    found[i] = True
        return out, found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(text_key(self.fingerprint, t), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb (k, v) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        self._db.close()
