"""A user's corpus directory: plain-text files or parquet shards of text, byte-level tokens.

    python -m trainer --preset gpu --corpus-dir /data/fineweb-edu ...

Documents, in the order of their paths relative to the directory (sorted, recursive):
- each ``*.txt`` file is one document (its bytes as they are, read as UTF-8 text);
- each row of a ``*.parquet`` file's ``text`` column is one document (FineWeb's layout; needs
  pyarrow). Other files are ignored.

Tokens are bytes (vocabulary 256), as with the embedded corpus, so val_bpb keeps its definition:
bits per byte of the raw UTF-8 text. The stream is the documents joined by a blank line.

Held-out split: the *last* documents, as few as cover ``HELD_OUT_BYTES`` (the largest preset's
validation range plus one), are validation and never trained on; everything before is training.
Adding shards at the end therefore moves the split; the corpus's fingerprint (paths, sizes and
modification times) is reported with every result, so runs on different data are not compared.

The joined stream is written once to a cache (``BILEVEL_CORPUS_CACHE``, default
``~/.cache/bilevel/corpora``) under the fingerprint and memory-mapped by every training: a corpus
larger than RAM is read page by page, and concurrent first uses write to temporary names.
numpy only, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.schema import PRESET_SETTINGS

DOCUMENT_SEPARATOR = b"\n\n"
HELD_OUT_BYTES = max(settings.val_bytes for settings in PRESET_SETTINGS.values()) + 1
SUFFIXES = (".txt", ".parquet")
PARQUET_TEXT_COLUMN = "text"
CACHE_ENV = "BILEVEL_CORPUS_CACHE"
CACHE_FORMAT = 1
STREAM_FILE = "stream.u8"
MANIFEST_FILE = "manifest.json"


class CorpusDirError(ValueError):
    """The directory cannot serve as a corpus; the message says why."""


@dataclass(frozen=True)
class CorpusDir:
    """A loaded corpus directory: the training stream (memory-mapped) and the held-out bytes."""

    path: Path
    fingerprint: str
    train: np.ndarray  # uint8, copy-on-write memory map
    validation: bytes
    documents: int
    validation_documents: int

    @property
    def label(self) -> str:
        return f"dir:{self.path}@{self.fingerprint[:12]}"

    def validation_range(self, num_bytes: int) -> bytes:
        """The first ``num_bytes + 1`` held-out bytes (one extra: each scored byte has a predecessor)."""
        if num_bytes + 1 > len(self.validation):
            raise CorpusDirError(f"validation range of {num_bytes} bytes exceeds the {len(self.validation)} held out")
        return self.validation[: num_bytes + 1]


def corpus_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise CorpusDirError(f"corpus directory {path} does not exist or is not a directory")
    files = sorted(
        (file for file in path.rglob("*") if file.suffix in SUFFIXES and file.is_file()),
        key=lambda file: file.relative_to(path).as_posix(),
    )
    if not files:
        raise CorpusDirError(f"corpus directory {path} has no {' or '.join(SUFFIXES)} files")
    return files


def fingerprint(path: Path, files: list[Path]) -> str:
    digest = hashlib.sha256(f"bilevel-corpus-{CACHE_FORMAT}".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"\0{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def documents(files: list[Path]) -> Iterator[bytes]:
    for file in files:
        if file.suffix == ".txt":
            yield file.read_bytes()
            continue
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CorpusDirError(f"{file} is parquet: install pyarrow (pip install pyarrow==25.0.1)") from None
        shard = pq.ParquetFile(file)
        if PARQUET_TEXT_COLUMN not in shard.schema_arrow.names:
            raise CorpusDirError(f"{file} has no {PARQUET_TEXT_COLUMN!r} column (columns: {shard.schema_arrow.names})")
        for batch in shard.iter_batches(columns=[PARQUET_TEXT_COLUMN]):
            for text in batch.column(0).to_pylist():
                yield (text or "").encode("utf-8")


def build_stream(files: list[Path], directory: Path) -> dict[str, int]:
    """Write the joined stream into ``directory``; return where validation starts and the counts."""
    starts: list[int] = []
    written = 0
    with open(directory / STREAM_FILE, "wb") as stream:
        for document in documents(files):
            if not document:
                continue
            if starts:
                stream.write(DOCUMENT_SEPARATOR)
                written += len(DOCUMENT_SEPARATOR)
            starts.append(written)
            stream.write(document)
            written += len(document)
    # The last documents that together reach HELD_OUT_BYTES are held out.
    held_out = len(starts) - 1
    while held_out > 0 and written - starts[held_out] < HELD_OUT_BYTES:
        held_out -= 1
    if held_out == 0 or written - starts[held_out] < HELD_OUT_BYTES:
        raise CorpusDirError(
            f"the corpus needs at least two documents and {HELD_OUT_BYTES:,} bytes in its last documents "
            f"to hold out for validation; it has {len(starts)} documents and {written:,} bytes"
        )
    return {
        "validation_start": starts[held_out],
        "documents": len(starts),
        "validation_documents": len(starts) - held_out,
    }


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bilevel" / "corpora")


def load_corpus_dir(path: Path | str) -> CorpusDir:
    """Load (building the cache on first use) the corpus in ``path``."""
    path = Path(path).resolve()
    files = corpus_files(path)
    key = fingerprint(path, files)
    cached = cache_root() / key
    if not (cached / MANIFEST_FILE).exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cached.parent))
        manifest = build_stream(files, building) | {"path": str(path), "files": len(files)}
        (building / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            building.rename(cached)
        except OSError:  # another process finished first: same content, keep theirs
            for file in building.iterdir():
                file.unlink()
            building.rmdir()
    manifest = json.loads((cached / MANIFEST_FILE).read_text())
    stream = np.memmap(cached / STREAM_FILE, dtype=np.uint8, mode="c")
    split = int(manifest["validation_start"])
    return CorpusDir(
        path=path,
        fingerprint=key,
        train=stream[: split - len(DOCUMENT_SEPARATOR)],
        validation=bytes(stream[split:]),
        documents=int(manifest["documents"]),
        validation_documents=int(manifest["validation_documents"]),
    )
