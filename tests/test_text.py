"""Text embeddings of class names: name cleaning, CLIP prompt ensembles, MiniLM, GloVe word vectors."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline  # noqa: F401  (torchvision / open_clip compat first)
from pipeline.errors import PipelineError
from pipeline.semantics import text as text_module
from pipeline.semantics.text import (
    WordVectors,
    clean_class_name,
    clip_text_embeddings,
    clip_text_provenance,
    minilm_embeddings,
    minilm_provenance,
    template_set,
    word_vector_embeddings,
)

NAMES = ["black footed albatross", "grizzly bear", "red striped circle"]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- clean_class_name ---------------------------------------------------------------------------

def test_clean_class_name_on_benchmark_names():
    assert clean_class_name("001.Black_footed_Albatross") == "black footed albatross"  # CUB
    assert clean_class_name("grizzly+bear") == "grizzly bear"  # AwA2
    assert clean_class_name("red_striped_circle") == "red striped circle"  # synthetic
    assert clean_class_name("airport_airport") == "airport airport"  # SUN: doubled names stay doubled
    assert clean_class_name("lean-to") == "lean-to"
    assert clean_class_name("has_bill_shape::curved_(up_or_down)") == "has bill shape curved up or down"  # CUB att
    assert clean_class_name("has_size::large_(16_-_32_in)") == "has size large 16 32 in"
    assert clean_class_name("sailing/ boating") == "sailing boating"  # SUN attribute
    with pytest.raises(PipelineError, match="n02391049.*class_lemma"):
        clean_class_name("n02391049")


def test_clean_class_name_gives_words_for_every_real_class(shared_data: Path):
    from scipy.io import loadmat

    for dataset in ("APY", "AWA2", "CUB", "SUN"):
        names = [str(n[0][0]) for n in loadmat(shared_data / "gbu" / dataset / "att_splits.mat")["allclasses_names"]]
        cleaned = [clean_class_name(n) for n in names]
        assert all(c and c == c.lower() and "_" not in c and "+" not in c for c in cleaned), dataset
        assert len(set(cleaned)) == len(names), dataset  # cleaning merges no two classes
    assert clean_class_name(names[0]) == "abbey"


# --- CLIP text tower ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> tuple[torch.nn.Module, str]:
    """A random ViT-B-32 saved as a local checkpoint, and the model itself."""
    import open_clip

    torch.manual_seed(7)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _direct(model: torch.nn.Module, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """CLIP_benchmark's recipe, class by class."""
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rows = []
    with torch.no_grad():
        for name in names:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]))
            emb = torch.nn.functional.normalize(emb, dim=-1).mean(dim=0)
            rows.append(emb / emb.norm())
    return torch.stack(rows)


def test_clip_prompt_ensemble_from_local_checkpoint_matches_encode_text(clip_checkpoint):
    import open_clip

    model, path = clip_checkpoint
    templates = ("a photo of a {}.", "a drawing of the {}.", "itap of my {}.")
    got = clip_text_embeddings(NAMES, "ViT-B-32", path, templates, batch_size=4)  # batches cut across classes
    assert got.shape == (3, 512) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, _direct(model, NAMES, templates).numpy(), atol=1e-5)
    reference = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer("ViT-B-32"), NAMES, templates)
    np.testing.assert_allclose(got, reference.T.numpy(), atol=1e-5)


def test_clip_single_template_is_the_plain_normalised_text_embedding(clip_checkpoint):
    import open_clip

    model, path = clip_checkpoint
    got = clip_text_embeddings(NAMES, "ViT-B-32", path, "simple")
    with torch.no_grad():
        plain = model.encode_text(open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {n}." for n in NAMES]))
    np.testing.assert_allclose(got, torch.nn.functional.normalize(plain, dim=-1).numpy(), atol=1e-5)


def test_clip_random_weights_warn_and_give_unit_vectors():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        got = clip_text_embeddings(NAMES, pretrained="none", templates=template_set("imagenet7"))
    assert got.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got[0], got[1])
    prov = clip_text_provenance("ViT-B-32", "none", "imagenet7")
    assert prov == {"encoder": "clip", "model": "ViT-B-32", "pretrained": "none",
                    "templates": list(template_set("imagenet7")), "dim": 512}


def test_clip_bad_arguments_are_one_line_errors():
    with pytest.raises(PipelineError, match="unknown template set 'fancy'"):
        clip_text_embeddings(NAMES, templates="fancy")
    with pytest.raises(PipelineError, match="must contain '{}' exactly once"):
        clip_text_embeddings(NAMES, templates=("a photo of a dog",))
    with pytest.raises(PipelineError, match="unknown model 'ViT-Z-99'"):
        clip_text_embeddings(NAMES, model="ViT-Z-99")
    with pytest.raises(PipelineError, match="not a file nor a known tag"):
        clip_text_embeddings(NAMES, pretrained="no-such-tag")


def test_clip_class_names_take_the_feature_stores_clip_unless_told_otherwise(clip_checkpoint, tmp_path):
    """A store extracted with ``clip:ViT-B-32`` and local weights: ``semantics --text clip`` embeds the class
    names with that model's text tower and those weights (image and text in one space); another backbone's
    store gets ViT-B-32 with OpenAI's weights, and an explicit setting overrides either."""
    from pipeline import api
    from pipeline.datasets.synthetic import generate_synthetic
    from pipeline.semantics.build import SemanticsConfig, clip_of_store
    from pipeline.semantics.file import SemanticsFile

    model, path = clip_checkpoint
    generate_synthetic(tmp_path / "data", images_per_class=2, image_size=32, seed=0)
    features = tmp_path / "clip.h5"
    api.extract("synthetic", tmp_path / "data", features, backbone="clip:ViT-B-32", pretrained=path, grid=False,
                workers=0)
    api.semantics(features, tmp_path / "semantics.h5", text=["clip"], templates="simple")
    with SemanticsFile(tmp_path / "semantics.h5") as f:
        built, texts, got = f.config(), f.class_texts, f.text("clip")
    assert (built["clip_model"], built["clip_pretrained"]) == ("ViT-B-32", str(Path(path).resolve()))
    np.testing.assert_allclose(got, clip_text_embeddings(texts, "ViT-B-32", path, "simple"), atol=1e-6)

    other = {"backbone": "efficientnet_lite0", "model": "tf_efficientnet_lite0", "pretrained": "imagenet"}
    assert (clip_of_store(SemanticsConfig(), other).clip_model, clip_of_store(SemanticsConfig(), other).clip_pretrained
            ) == ("ViT-B-32", "openai")
    rn50 = {"backbone": "clip:RN50", "model": "RN50", "pretrained": "openai", "options": {"pretrained": "openai"}}
    assert clip_of_store(SemanticsConfig(), rn50).clip_model == "RN50"
    told = clip_of_store(SemanticsConfig(clip_model="ViT-L-14"), rn50)  # another model: not the store's weights
    assert (told.clip_model, told.clip_pretrained) == ("ViT-L-14", "openai")


# --- MiniLM -------------------------------------------------------------------------------------

def test_minilm_unit_vectors_with_meaningful_neighbours():
    texts = ["zebra", "horse", "submarine", "grizzly bear", "polar bear", "killer whale"]
    emb = minilm_embeddings(texts)
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    zebra, horse, submarine, grizzly, polar, orca = emb
    assert zebra @ horse > zebra @ submarine + 0.1
    assert grizzly @ polar > grizzly @ orca
    assert minilm_embeddings([]).shape == (0, 384)
    assert minilm_provenance()["dim"] == 384


def test_minilm_batches_by_length_keep_each_text_with_its_own_vector():
    """Texts are encoded in batches sorted by word-piece length: each row is still its own text's
    embedding, whatever the batch it went in, duplicates included."""
    texts = ["ox", "a small bird that swims under water", "golden retriever", "ox", "space shuttle", "yak"]
    emb = minilm_embeddings(texts, batch_size=2)
    model = text_module._minilm("cpu")
    alone = np.stack([model.encode([t], normalize_embeddings=True) for t in texts])[:, 0]
    np.testing.assert_allclose(emb, alone, atol=1e-5)


# --- word vectors -------------------------------------------------------------------------------

GLOVE_LINES = [
    "black 1 0 0 0",
    "footed 0 1 0 0",
    "albatross 0 0 1 0",
    "bear 0 0 0 2",
    "all -1 -1 0 0",
    "purpose 1 3 0 0",
]


@pytest.fixture()
def glove_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(GLOVE_LINES) + "\n", encoding="utf-8")
    return path


def test_word_vectors_average_known_words_and_report_the_rest(glove_file: Path, caplog):
    vectors = WordVectors.load(str(glove_file))
    assert vectors.dim == 4 and len(vectors.words) == 6
    texts = ["black footed albatross", "Grizzly Bear", "all-purpose", "snark boojum"]
    with caplog.at_level(logging.WARNING, logger="pipeline.semantics.text"):
        emb, oov = word_vector_embeddings(texts, vectors)
    np.testing.assert_allclose(emb[0], [1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(emb[1], [0, 0, 0, 2])  # lower-cased, "grizzly" left out
    np.testing.assert_allclose(emb[2], [0, 1, 0, 0])  # hyphenated word not in the file: mean of its parts
    np.testing.assert_array_equal(emb[3], 0)  # nothing known: a zero row
    assert oov == ["grizzly", "snark", "boojum"]
    assert "snark" in caplog.text and "'snark boojum'" in caplog.text and "zero vector" in caplog.text
    assert vectors.provenance == {"encoder": "word_vectors", "model": "tiny.txt", "pretrained": str(glove_file),
                                  "dim": 4, "vocab_size": 6}


def test_word_vectors_from_gzip_and_word2vec_header(tmp_path: Path, glove_file: Path):
    gz = tmp_path / "tiny.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("6 4\n" + "\n".join(GLOVE_LINES) + "\n")
    plain, packed = WordVectors.load(str(glove_file)), WordVectors.load(str(gz))
    assert packed.words == plain.words
    np.testing.assert_array_equal(packed.vectors, plain.vectors)


def test_word_vectors_bad_input_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PipelineError, match="not a file nor 'glove-6b-50d'"):
        WordVectors.load(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 2 3\ndog 1 2\n")
    with pytest.raises(PipelineError, match="bad.txt:2: expected a word and 3 numbers"):
        WordVectors.load(str(bad))
    bad.write_text("cat 1 2 x\n")
    with pytest.raises(PipelineError, match="bad.txt:1: not a word vector"):
        WordVectors.load(str(bad))
    bad.write_bytes(b"cat 1 2 3\n" * 5000 + b"caf\xe9 1 2 3\n")  # Latin-1, past a reader's first buffer
    with pytest.raises(PipelineError, match="bad.txt:5001: not UTF-8 text \\(invalid continuation byte at byte 4 of "
                                            "the line\\); save the file as UTF-8$"):
        WordVectors.load(str(bad))


def test_packaged_glove_6b_50d():
    vectors = WordVectors.load("glove-6b-50d")
    assert vectors.vectors.shape == (400000, 50) and vectors.vectors.dtype == np.float32
    assert vectors.words[:4] == ["the", ",", ".", "of"]
    np.testing.assert_allclose(vectors["the"][:3], [0.418, 0.24968, -0.41242])  # glove.6B.50d.txt, line 1
    assert _cos(vectors["king"], vectors["queen"]) > _cos(vectors["king"], vectors["carrot"]) + 0.3
    emb, oov = word_vector_embeddings([clean_class_name("grizzly+bear"), clean_class_name("killer+whale")], vectors)
    assert oov == [] and emb.shape == (2, 50)
    np.testing.assert_allclose(emb[0], (vectors["grizzly"] + vectors["bear"]) / 2, rtol=1e-6)
    assert vectors.provenance["model"] == "glove-6b-50d" and vectors.provenance["vocab_size"] == 400000
