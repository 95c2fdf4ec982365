"""Text tokens: a SentencePiece model fitted on the datasets' ``obs_text`` column.

    python -m trainer.tokenizer fit runs/quickstart --out runs/text.model
    python -m trainer.tokenizer fit ROOT_A ROOT_B --out text.model --vocab-size 8000

    text = TextTokenizer.load("runs/text.model")            # a local file
    text = TextTokenizer.load("my-org/gato-text")           # a hub repo holding tokenizer.model
    text = TextTokenizer.load("my-org/gato-text:spm.model") # ... or a named file in it
    ids = text.encode("go to the red ball")                # int64 ids in [0, 32000)

Gato uses a 32000-piece SentencePiece vocabulary; ``fit`` asks for up to that many pieces and
lets SentencePiece stop earlier on a small corpus (``hard_vocab_limit=False``), with BPE
merges by default (they keep whole words of a small corpus; see ``fit_text_model``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

TEXT_VOCAB_SIZE = 32000
DEFAULT_HUB_FILENAME = "tokenizer.model"

log = logging.getLogger(__name__)


class TextTokenizer:
    """A loaded SentencePiece model with a cache: mission strings repeat every step."""

    def __init__(self, model_bytes: bytes, origin: str = "<bytes>") -> None:
        import sentencepiece as spm

        self.origin = origin
        self.model_bytes = model_bytes
        self._processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        if self._processor.vocab_size() > TEXT_VOCAB_SIZE:
            raise ValueError(f"{origin}: SentencePiece vocab {self._processor.vocab_size()} exceeds "
                             f"Gato's text range [0, {TEXT_VOCAB_SIZE})")
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, where: str | os.PathLike) -> TextTokenizer:
        """From a local ``.model`` path, or a hub id ``owner/repo[:filename]`` (huggingface_hub
        resolves it, honouring HF_HUB_CACHE and HF_HUB_OFFLINE)."""
        path = resolve_model_path(where)
        return cls(Path(path).read_bytes(), origin=str(where))

    @property
    def vocab_size(self) -> int:
        return self._processor.vocab_size()

    def encode(self, text: str) -> np.ndarray:
        """One string -> int64 ids (cached; the cache is cleared past 100k distinct strings)."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            ids = np.asarray(self._processor.encode(text), dtype=np.int64)
            ids.setflags(write=False)
            self._cache[text] = ids
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._processor.decode([int(i) for i in ids])

    def __getstate__(self) -> dict:
        return {"model_bytes": self.model_bytes, "origin": self.origin}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_bytes"], state["origin"])

    def __repr__(self) -> str:
        return f"TextTokenizer({self.origin!r}, vocab={self.vocab_size})"


def resolve_model_path(where: str | os.PathLike) -> str:
    """A local file as is; otherwise ``owner/repo[:filename]`` through ``hf_hub_download``."""
    text = os.fspath(where)
    if os.path.isfile(text):
        return text
    repo_id, _, filename = text.partition(":")
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")) or os.path.splitext(repo_id)[1] == ".model":
        raise ValueError(f"text model {text!r}: no such file, and not a hub id of the form owner/repo[:filename]")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename or DEFAULT_HUB_FILENAME)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise ValueError(f"text model {text!r}: not a local file and the hub could not provide "
                         f"{filename or DEFAULT_HUB_FILENAME} ({type(error).__name__}: {error})") from None


def fit_text_model(roots: Sequence[str], out: str | os.PathLike, vocab_size: int = TEXT_VOCAB_SIZE,
                   model_type: str = "bpe") -> dict:
    """Train SentencePiece on the distinct ``obs_text`` strings of ``roots``; write ``out``
    atomically and return a summary (strings, characters, pieces).

    BPE by default: on a small corpus (BabyAI's few dozen missions) a unigram model with the
    soft vocabulary limit keeps only characters ("go to the red ball" = 13 tokens, each a loss
    target at every step), where BPE keeps the words (5 tokens)."""
    import sentencepiece as spm

    if not 1 <= vocab_size <= TEXT_VOCAB_SIZE:
        raise ValueError(f"--vocab-size={vocab_size}; expected 1..{TEXT_VOCAB_SIZE}")
    texts = sorted(set(iter_dataset_texts(roots)))
    if not texts:
        raise ValueError(f"no obs_text strings in {list(roots)}: nothing to fit a text model on")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-spm-") as work:
        corpus = Path(work) / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        prefix = Path(work) / "model"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
            hard_vocab_limit=False, model_type=model_type, character_coverage=1.0,
            byte_fallback=False, minloglevel=2, num_threads=1,
        )
        os.replace(f"{prefix}.model", out)
    tokenizer = TextTokenizer.load(out)
    summary = {"model": str(out), "strings": len(texts), "characters": sum(map(len, texts)),
               "vocab_size": tokenizer.vocab_size}
    log.info("fitted %s", summary)
    return summary


def iter_dataset_texts(roots: Iterable[str]) -> Iterator[str]:
    """Distinct ``obs_text`` strings of each step file, reading only that column."""
    from shards.format import OBS_TEXT
    from shards.reader import Dataset, open_parquet

    for root in roots:
        dataset = Dataset(root)
        with_text = [task for task, spec in dataset.manifest.tasks.items() if OBS_TEXT in spec.observation]
        files = sorted({row["file"] for row in dataset.index.select(["task", "file"]).to_pylist()
                        if row["task"] in with_text})
        for file in files:
            fs, path = dataset.resolve(file)
            parquet = open_parquet(fs, path)
            for group in range(parquet.metadata.num_row_groups):
                column = parquet.read_row_group(group, columns=[OBS_TEXT])[OBS_TEXT]
                yield from (t for t in pc.unique(column).to_pylist() if t)
