"""Vocabularies and the default lambda in backend configuration: validated when loaded, and
declared by every detect and vqa backend of fmprog/configs/real.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmprog.backends import ConfigError, Function, load_catalog
from fmprog.vision.vocabulary import VocabularySpec

CONFIG = Path(__file__).resolve().parents[2] / "fmprog" / "configs"
FORMS = ("what", "color", "is_a", "property", "choice", "exists", "count")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    return path


def test_every_detect_and_vqa_backend_of_real_yaml_declares_its_vocabulary():
    catalog = load_catalog(CONFIG / "real.yaml")
    by_engine: dict[str, list] = {"darknet": [], "classifier": []}
    for spec in catalog.backends:
        if spec.function in (Function.detect, Function.vqa):
            by_engine[spec.engine.kind].append(spec.vocabulary)
    assert by_engine == {
        "darknet": [VocabularySpec(nouns="coco")] * 2,
        "classifier": [VocabularySpec(nouns="coco+imagenet", questions=FORMS)] * 2,
    }
    others = [spec for spec in catalog.backends if spec.function in (Function.llm, Function.ocr)]
    assert others and all(spec.vocabulary is None for spec in others)


@pytest.mark.parametrize("name", ["synthetic.yaml", "gpu.yaml"])
def test_the_other_configurations_declare_no_vocabulary(name):
    assert all(spec.vocabulary is None for spec in load_catalog(CONFIG / name).backends)


@pytest.mark.parametrize(
    ("name", "default_lambda"), [("real.yaml", 0.001), ("synthetic.yaml", 100), ("gpu.yaml", 0.001)]
)
def test_each_configuration_gives_the_default_lambda_of_its_cost_unit(name, default_lambda):
    assert load_catalog(CONFIG / name).default_lambda == default_lambda


def test_the_default_lambda_is_optional_and_bounded(tmp_path):
    backends = "backends:\n  - {name: d, function: detect, cost: 1}\n"
    assert load_catalog(write(tmp_path, backends)).default_lambda is None
    assert load_catalog(write(tmp_path, "default_lambda: 0\n" + backends)).default_lambda == 0
    for bad in ("-1", ".nan", "2e9"):
        with pytest.raises(ConfigError, match="default_lambda: "):
            load_catalog(write(tmp_path, f"default_lambda: {bad}\n" + backends))


def test_a_vocabulary_is_read_with_its_synonyms_threshold_and_questions(tmp_path):
    text = """
backends:
  - name: people
    function: detect
    cost: 1
    vocabulary: {nouns: person, synonyms: {Jogger: [person]}, embedding_threshold: null}
  - name: asker
    function: vqa
    cost: 2
    vocabulary: {nouns: coco, questions: [what, count], embedding_threshold: 0.6}
"""
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.get("people").vocabulary == VocabularySpec(
        nouns="person", synonyms={"jogger": ("person",)}, embedding_threshold=None
    )
    assert catalog.get("asker").vocabulary == VocabularySpec(
        nouns="coco", questions=("what", "count"), embedding_threshold=0.6
    )


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            "{name: l, function: llm, cost: 1, vocabulary: {nouns: coco}}",
            "backends.0: Value error, a vocabulary is declared for detect and vqa backends, not llm",
        ),
        (
            "{name: o, function: ocr, cost: 1, vocabulary: {nouns: coco}}",
            "backends.0: Value error, a vocabulary is declared for detect and vqa backends, not ocr",
        ),
        (
            "{name: v, function: vqa, cost: 1, vocabulary: {nouns: coco}}",
            "backends.0: Value error, vocabulary.questions lists the question forms of a vqa backend, and only of one",
        ),
        (
            "{name: d, function: detect, cost: 1, vocabulary: {nouns: coco, questions: [what]}}",
            "backends.0: Value error, vocabulary.questions lists the question forms of a vqa backend, and only of one",
        ),
        (
            "{name: d, function: detect, cost: 1, vocabulary: {nouns: lvis}}",
            "backends.0.vocabulary.nouns: Input should be 'coco', 'person' or 'coco+imagenet'",
        ),
        (
            "{name: v, function: vqa, cost: 1, vocabulary: {nouns: coco, questions: [why]}}",
            "backends.0.vocabulary.questions.0: Input should be 'what', 'color', 'is_a', 'property', 'choice', "
            "'exists' or 'count'",
        ),
        (
            "{name: d, function: detect, cost: 1, vocabulary: {nouns: coco, colours: true}}",
            "backends.0.vocabulary.colours: Extra inputs are not permitted",
        ),
        (
            "{name: d, function: detect, cost: 1, vocabulary: {nouns: coco, embedding_threshold: 0}}",
            "backends.0.vocabulary.embedding_threshold: Input should be greater than 0",
        ),
        (
            "{name: d, function: detect, cost: 1, vocabulary: {nouns: coco, embedding_threshold: 1.5}}",
            "backends.0.vocabulary.embedding_threshold: Input should be less than or equal to 1",
        ),
    ],
)
def test_a_misplaced_or_malformed_vocabulary_is_refused_with_its_place(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=r"backends\.yaml: invalid backend configuration") as caught:
        load_catalog(write(tmp_path, f"backends:\n  - {backend}\n"))
    assert message in str(caught.value)


def test_a_synonym_naming_an_unknown_class_is_refused_when_the_configuration_is_loaded(tmp_path):
    text = "backends:\n  - {name: d, function: detect, cost: 1, vocabulary: {nouns: person, synonyms: {auto: [car]}}}\n"
    with pytest.raises(ConfigError, match="names classes the person vocabulary does not know: car"):
        load_catalog(write(tmp_path, text))


YOLO = "{kind: darknet, model: {weights: {path: /w}, network: {path: /c}}}"
LITE = "{kind: classifier, model: {path: /m}, architecture: efficientnet-lite0}"


@pytest.mark.parametrize(
    ("engine", "function", "expected"),
    [
        (YOLO, "detect", VocabularySpec(nouns="coco")),
        ("{kind: hog}", "detect", VocabularySpec(nouns="person")),
        (  # with a detector on the crop, the whole-image questions too
            LITE[:-1] + ", detector: {weights: {path: /w}, network: {path: /c}}}",
            "vqa",
            VocabularySpec(nouns="coco+imagenet", questions=FORMS),
        ),
        (LITE, "vqa", VocabularySpec(nouns="coco+imagenet", questions=FORMS[:-2])),  # without: not them
        ("{kind: torch, model: {zoo: detect-small}}", "detect", None),  # an engine whose classes are not known
    ],
)
def test_an_engine_whose_classes_are_known_gets_its_vocabulary_when_none_is_declared(
    tmp_path, engine, function, expected
):
    catalog = load_catalog(
        write(tmp_path, f"backends:\n  - {{name: b, function: {function}, cost: 1, engine: {engine}}}\n")
    )
    assert catalog.get("b").vocabulary == expected


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            "{name: d, function: detect, cost: 1, engine: {kind: hog}, vocabulary: {nouns: coco}}",
            "the hog engine sees the person nouns, not coco",
        ),
        (
            f"{{name: d, function: detect, cost: 1, engine: {YOLO}, vocabulary: {{nouns: coco+imagenet}}}}",
            "the darknet engine sees the coco nouns, not coco+imagenet",
        ),
        (
            f"{{name: v, function: vqa, cost: 1, engine: {LITE}, "
            "vocabulary: {nouns: coco+imagenet, questions: [what, count]}}",
            "the classifier engine cannot answer count questions (whole-image questions need its detector)",
        ),
    ],
)
def test_a_vocabulary_the_engine_cannot_see_is_refused(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=r"invalid backend configuration") as caught:
        load_catalog(write(tmp_path, f"backends:\n  - {backend}\n"))
    assert message in str(caught.value)
