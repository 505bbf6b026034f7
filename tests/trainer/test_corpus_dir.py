"""A user's corpus directory (plain text and parquet shards): split, cache, errors, and a real training on it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.corpus_dir import (
    DOCUMENT_SEPARATOR,
    HELD_OUT_BYTES,
    STREAM_FILE,
    CorpusDirError,
    cache_root,
    load_corpus_dir,
)
from trainer.schema import default_config

from .test_launch import launch

WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by")


def text(seed: int, size: int) -> str:
    """``size`` bytes of word salad: learnable (a small vocabulary), different per seed."""
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILEVEL_CORPUS_CACHE", str(tmp_path / "cache"))


def make_corpus(root: Path) -> dict[str, Any]:
    """Two plain-text files in a subfolder, then a parquet shard whose last rows are held out."""
    (root / "a").mkdir(parents=True)
    first, second = text(1, 150_000), text(2, 150_000)
    (root / "a" / "01.txt").write_text(first)
    (root / "a" / "02.txt").write_text(second)
    (root / "notes.md").write_text("ignored: neither .txt nor .parquet")
    rows = [text(10 + index, 100_000) for index in range(5)] + [None]  # a null row is an empty document
    pq.write_table(pa.table({"id": list(range(6)), "text": rows}), root / "b-shard-00000.parquet")
    return {"train_texts": [first, second, *rows[:2]], "held_out_texts": rows[2:5]}


def test_documents_are_split_with_the_last_ones_held_out_and_cached(tmp_path: Path) -> None:
    expected = make_corpus(tmp_path / "corpus")
    corpus = load_corpus_dir(tmp_path / "corpus")
    # Sorted by relative path: a/01.txt, a/02.txt, then the shard's rows; the empty row is skipped.
    assert corpus.documents == 7 and corpus.validation_documents == 3
    assert bytes(corpus.train) == DOCUMENT_SEPARATOR.join(t.encode() for t in expected["train_texts"])
    assert corpus.validation == DOCUMENT_SEPARATOR.join(t.encode() for t in expected["held_out_texts"])
    assert len(corpus.validation) >= HELD_OUT_BYTES  # as few documents as cover the largest validation range
    assert corpus.validation_range(131_072) == corpus.validation[:131_073]
    # The second load maps the same cache file instead of rebuilding it; a changed file is a new corpus.
    stream = cache_root() / corpus.fingerprint / STREAM_FILE
    built = stream.stat().st_mtime_ns
    assert load_corpus_dir(tmp_path / "corpus").fingerprint == corpus.fingerprint
    assert stream.stat().st_mtime_ns == built
    (tmp_path / "corpus" / "a" / "02.txt").write_text(text(3, 150_001))
    assert load_corpus_dir(tmp_path / "corpus").fingerprint != corpus.fingerprint


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "has no .txt or .parquet files"),
        ({"one.txt": text(0, 400_000)}, "needs at least two documents"),
        ({"one.txt": text(0, 1000), "two.txt": text(1, 1000)}, "262,145 bytes in its last documents"),
    ],
)
def test_unusable_directories_say_why(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(CorpusDirError, match=message):
        load_corpus_dir(tmp_path)


def test_a_parquet_shard_needs_a_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["x" * 10]}), tmp_path / "shard.parquet")
    with pytest.raises(CorpusDirError, match="has no 'text' column"):
        load_corpus_dir(tmp_path)


def test_a_missing_directory_is_an_invalid_config_before_training(tmp_path: Path) -> None:
    summary = launch(default_config(), tmp_path / "work", corpus_dir=tmp_path / "nowhere")
    assert summary.failure_class == "invalid_config"
    assert "does not exist" in (summary.error or "")


def test_training_on_a_user_corpus_directory_end_to_end(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    summary = launch(default_config(), tmp_path / "work", corpus_dir=tmp_path / "corpus", budget_value=2e11)
    assert summary.failure_class == "ok", summary.error
    corpus = load_corpus_dir(tmp_path / "corpus")
    assert summary.corpus == corpus.label and summary.corpus.startswith("dir:")
    assert summary.extra["corpus_documents"] == 7 and summary.extra["corpus_train_bytes"] == len(corpus.train)
    # val_bpb keeps its definition (bits per byte of the held-out text): untrained is 8.0, and a
    # 25-word vocabulary is learnt quickly.
    assert summary.val_bpb is not None and summary.val_bpb < 5.0
    assert summary.extra["val_bytes"] == 131_072


def test_a_worker_given_bilevel_corpus_dir_passes_it_to_every_training(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runs.engine import objective
    from runs.models import Experiment

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(objective, "run_training", lambda config, **arguments: calls.append(arguments))
    settings.TRAINER_CORPUS_DIR = str(tmp_path)
    experiment = Experiment(objective="trainer", preset="gpu", budget_kind="seconds", budget_value=60.0, threads=1)
    objective.evaluate(default_config("gpu"), experiment=experiment, seed=0, workdir=tmp_path, on_progress=print)
    assert calls[0]["corpus_dir"] == str(tmp_path) and calls[0]["preset"] == "gpu"
