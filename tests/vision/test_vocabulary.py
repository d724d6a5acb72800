"""What a real-image backend can see: a program's noun matched to a vocabulary's classes by name,
plural, synonym, head noun and WordLlama embedding (``fmprog.vision.vocabulary``)."""

from __future__ import annotations

import pytest

from fmprog.vision.classes import COCO_CLASSES, IMAGENET_OF_COCO, imagenet_names
from fmprog.vision.vocabulary import DEFAULT_EMBEDDING_THRESHOLD, VocabularySpec, normalize, singular_forms, vocabulary

QUESTIONS = ("what", "color", "is_a", "property", "choice", "exists", "count")
COCO = VocabularySpec(nouns="coco")
PERSON = VocabularySpec(nouns="person")
COCO_IMAGENET = VocabularySpec(nouns="coco+imagenet", questions=QUESTIONS)
VEHICLES = ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")


@pytest.mark.parametrize(
    ("noun", "classes"),
    [
        ("person", ("person",)),
        ("Person", ("person",)),
        ("the car", ("car",)),
        ("A Fire-Hydrant!", ("fire hydrant",)),
        ("traffic lights", ("traffic light",)),
        ("buses", ("bus",)),
        ("knives", ("knife",)),
        ("mice", ("mouse",)),
        ("benches", ("bench",)),
        ("wine glasses", ("wine glass",)),
        ("skis", ("skis",)),  # a class name that is itself plural
    ],
)
def test_a_class_name_singular_or_plural_matches_by_name(noun, classes):
    match = vocabulary(COCO).resolve(noun)
    assert match is not None
    assert (match.classes, match.how, match.exact, match.similarity) == (classes, "name", True, None)


@pytest.mark.parametrize(
    ("noun", "classes"),
    [
        ("people", ("person",)),
        ("pedestrians", ("person",)),
        ("women", ("person",)),
        ("bike", ("bicycle",)),
        ("motorbikes", ("motorcycle",)),
        ("van", ("car", "truck")),
        ("bag", ("handbag", "backpack", "suitcase")),
        ("vehicle", VEHICLES),
        ("vehicles", VEHICLES),
    ],
)
def test_everyday_words_match_their_classes_by_synonym(noun, classes):
    match = vocabulary(COCO).resolve(noun)
    assert match is not None
    assert (match.classes, match.how, match.exact) == (classes, "synonym", True)


@pytest.mark.parametrize("noun", ["object", "objects", "things", "something", "an item"])
def test_generic_nouns_stand_for_every_class(noun):
    coco = vocabulary(COCO).resolve(noun)
    person = vocabulary(PERSON).resolve(noun)
    assert coco is not None and person is not None
    assert (coco.how, coco.classes, coco.exact) == ("generic", COCO_CLASSES, True)
    assert (person.how, person.classes) == ("generic", ("person",))


@pytest.mark.parametrize(
    ("noun", "classes", "ignored"),
    [
        ("red car", ("car",), ("red",)),
        ("a big red car", ("car",), ("big", "red")),
        ("parked buses", ("bus",), ("parked",)),
        ("person riding a bike", ("person",), ("riding", "a", "bike")),
        ("dog with a hat", ("dog",), ("with", "a", "hat")),
        ("people near the car", ("person",), ("near", "the", "car")),
        ("big red object", COCO_CLASSES, ("big", "red")),  # a generic head
    ],
)
def test_a_noun_phrase_matches_by_its_head_and_names_the_words_it_cannot_check(noun, classes, ignored):
    match = vocabulary(COCO).resolve(noun)
    assert match is not None
    assert (match.classes, match.how, match.ignored) == (classes, "head", ignored)
    assert not match.exact


@pytest.mark.parametrize(
    ("noun", "classes"),
    [
        ("motorcar", ("car",)),  # nearest candidate: "car"
        ("kitty", ("cat",)),  # nearest candidate: the synonym "kitten"
        ("human being", ("person",)),  # nearest candidate: the synonym "human"
    ],
)
def test_a_noun_only_wordllama_relates_to_a_class_matches_by_embedding(noun, classes):
    match = vocabulary(COCO).resolve(noun)
    assert match is not None
    assert (match.classes, match.how, match.exact) == (classes, "embedding", True)
    assert DEFAULT_EMBEDDING_THRESHOLD <= match.similarity <= 1
    # the same noun with embedding matching switched off names nothing: it was the embedding that matched
    assert vocabulary(VocabularySpec(nouns="coco", embedding_threshold=None)).resolve(noun) is None


def test_a_noun_below_the_embedding_threshold_is_outside_until_the_threshold_is_lowered():
    # "feline" is closest to "cat", at a cosine similarity of about 0.38: below the default 0.6
    assert vocabulary(COCO).resolve("feline") is None
    lowered = vocabulary(VocabularySpec(nouns="coco", embedding_threshold=0.3)).resolve("feline")
    assert lowered is not None
    assert (lowered.classes, lowered.how) == (("cat",), "embedding")
    assert 0.3 <= lowered.similarity < DEFAULT_EMBEDDING_THRESHOLD
    # and a threshold above the match's similarity refuses the match "sedan" -> car (about 0.54) made
    assert vocabulary(VocabularySpec(nouns="coco", embedding_threshold=0.9)).resolve("sedan") is None


@pytest.mark.parametrize("noun", ["octopus", "sky", "building", "triangle", "", "   ", "the"])
def test_a_noun_that_names_no_class_is_outside_the_vocabulary(noun):
    assert vocabulary(COCO).resolve(noun) is None


@pytest.mark.parametrize("noun", ["car", "dog", "truck", "bus", "vehicle", "red car", "umbrella"])
def test_the_person_vocabulary_sees_only_people(noun):
    assert vocabulary(PERSON).resolve(noun) is None


@pytest.mark.parametrize("noun", ["person", "people", "pedestrian", "man", "children", "persons"])
def test_the_person_vocabulary_sees_people_by_any_name(noun):
    match = vocabulary(PERSON).resolve(noun)
    assert match is not None and match.classes == ("person",) and match.exact


@pytest.mark.parametrize("noun", ["bike", "bicycle"])
def test_the_person_vocabulary_does_not_take_a_bicycle_for_a_person(noun):
    assert vocabulary(PERSON).resolve(noun) is None


@pytest.mark.parametrize(("noun", "wrong"), [("tiger", "refrigerator"), ("hand", "handbag")])
def test_an_embedding_match_does_not_name_an_unrelated_class(noun, wrong):
    match = vocabulary(COCO).resolve(noun)
    assert match is None or wrong not in match.classes


def test_the_plural_of_baseball_glove_matches_by_name():
    match = vocabulary(VocabularySpec(nouns="coco", embedding_threshold=None)).resolve("baseball gloves")
    assert match is not None and match.how == "name" and match.classes == ("baseball glove",)


@pytest.mark.parametrize("noun", ["kitty with a hat", "kitty on the sofa"])
def test_a_qualified_noun_is_never_an_exact_match(noun):
    match = vocabulary(COCO).resolve(noun)
    assert match is None or not match.exact


def test_coco_and_imagenet_nouns_name_both_class_lists():
    vocab = vocabulary(COCO_IMAGENET)
    assert vocab.size == len(set(COCO_CLASSES) | {name.lower() for name in imagenet_names()}) > 1000
    assert vocabulary(COCO).size == 80 and vocabulary(PERSON).size == 1
    jeep = vocab.resolve("jeeps")
    assert jeep is not None and (jeep.classes, jeep.how) == (("jeep",), "name")
    retriever = vocab.resolve("golden retriever")
    assert retriever is not None and (retriever.classes, retriever.how) == (("Golden Retriever",), "name")
    assert vocabulary(COCO).resolve("jeep") is None  # only an ImageNet class
    car = vocab.resolve("car")  # a COCO class keeps its COCO name
    assert car is not None and car.classes == ("car",)


def test_imagenet_indices_map_coco_classes_to_their_imagenet_instances_and_imagenet_names_to_their_index():
    vocab = vocabulary(COCO_IMAGENET)
    names = imagenet_names()
    dog = vocab.imagenet_indices(["dog"])
    assert dog == IMAGENET_OF_COCO["dog"] and len(dog) == 118
    assert {names[i] for i in dog} >= {"Golden Retriever", "Beagle"}
    assert vocab.imagenet_indices(["person"]) == ()  # ImageNet has no person class
    retriever = vocab.resolve("golden retriever")
    assert retriever is not None
    assert [names[i] for i in vocab.imagenet_indices(retriever.classes)] == ["Golden Retriever"]
    # each index once, in order of the classes
    assert vocab.imagenet_indices(["orange", "orange", "car"]) == (950, *IMAGENET_OF_COCO["car"])
    assert names[950] == "orange"


def test_configured_synonyms_extend_the_vocabulary():
    spec = VocabularySpec(nouns="person", synonyms={"The Jogger": ["person"]})
    assert spec.synonyms == {"jogger": ("person",)}  # keys normalised as nouns are
    match = vocabulary(spec).resolve("joggers")
    assert match is not None and (match.classes, match.how) == (("person",), "synonym")
    assert vocabulary(PERSON).resolve("joggers") is None  # not without it


@pytest.mark.parametrize(
    ("fields", "unknown"),
    [
        ({"nouns": "person", "synonyms": {"auto": ["car"]}}, "car"),
        ({"nouns": "coco", "synonyms": {"pet": ["dog", "hamster"]}}, "hamster"),
    ],
)
def test_a_configured_synonym_naming_an_unknown_class_is_refused(fields, unknown):
    with pytest.raises(ValueError, match=f"names classes the {fields['nouns']} vocabulary does not know: {unknown}"):
        VocabularySpec(**fields)


def test_a_configured_synonym_of_an_imagenet_class_maps_to_its_imagenet_index():
    spec = VocabularySpec(nouns="coco+imagenet", questions=QUESTIONS, synonyms={"goldie": ["golden retriever"]})
    vocab = vocabulary(spec)
    match = vocab.resolve("goldie")
    assert match is not None and match.how == "synonym"
    assert vocab.imagenet_indices(match.classes) == (207,)


def test_vocabularies_are_shared_per_spec_and_resolutions_are_remembered():
    first = vocabulary(VocabularySpec(nouns="coco"))
    assert vocabulary(VocabularySpec(nouns="coco")) is first
    assert vocabulary(VocabularySpec(nouns="coco", embedding_threshold=0.5)) is not first
    assert first.resolve("a red car") is first.resolve("Red car")  # the normalised phrase is the key


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("A Red-Car!", "red car"),
        ("  the  TRAFFIC lights ", "traffic lights"),
        ("an", ""),
        ("cars, trucks", "cars trucks"),
    ],
)
def test_normalize_lowercases_keeps_words_and_drops_leading_articles(text, normal):
    assert normalize(text) == normal


@pytest.mark.parametrize(
    ("phrase", "one"),
    [
        ("traffic lights", "traffic light"),
        ("buses", "bus"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("glasses", "glass"),
        ("puppies", "puppy"),
        ("knives", "knife"),
        ("cars", "car"),
        ("bus", "bus"),
        ("grass", "grass"),
        ("baseball gloves", "baseball glove"),
        ("", ""),
    ],
)
def test_the_singular_forms_hold_the_last_word_in_the_singular(phrase, one):
    assert one in singular_forms(phrase) and singular_forms(phrase)[0] == phrase
