from __future__ import annotations

import pytest
from pydantic import ValidationError

from fmprog.backends import BackendCatalog
from fmprog.program import compile_program
from router.errors import BackendsRejected, NotFound, ProgramInvalid, SynthesisUnavailable
from router.programs import ProgramRegistry
from router.schemas import ProgramCreate
from router.store import Store
from tests.fakes import COSTS
from tests.router.conftest import create, example

EXAMPLE_NAMES = ["landmark_city", "leftmost_color", "person_on_bike", "triangle_left_of_circle"]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_registration_gives_every_call_site_its_candidates_and_costs(
    programs: ProgramRegistry, catalog: BackendCatalog, name: str
):
    public = programs.register(create(name, kind="open"))
    sites = compile_program(example(name)).call_sites
    assert [s.id for s in public.call_sites] == [s.id for s in sites]
    for site, runtime_site in zip(public.call_sites, sites, strict=True):
        assert site.function == runtime_site.function and site.line == runtime_site.line
        expected = [(spec.name, spec.cost) for spec in catalog.for_function(site.function)]
        assert [(c.name, c.cost) for c in site.candidates] == expected
        assert all(c.cost == COSTS[c.name] for c in site.candidates)
    assert public.kind == "open" and public.lambda_ == 0.01 and public.algorithm == "structured"
    assert public.digest == compile_program(example(name)).digest
    assert programs.get(public.id) == public


def test_allowed_backends_restrict_the_candidates_of_their_function(programs: ProgramRegistry):
    public = programs.register(create("person_on_bike", backends={"vqa": ["vqa-large"]}))
    by_function = {site.function.value: [c.name for c in site.candidates] for site in public.call_sites}
    assert by_function == {"detect": ["detect-small", "detect-large"], "vqa": ["vqa-large"]}


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ({"vqa": ["vqa-huge"]}, "unknown backend 'vqa-huge'"),
        ({"vqa": ["detect-small"]}, "backend 'detect-small' serves detect, not vqa"),
        ({"detect": []}, "no backend is allowed for detect"),
        ({"llm": ["llm-tiny"]}, "unknown backend 'llm-tiny'"),  # a function the program does not call
    ],
)
def test_bad_allowed_backends_are_named_and_nothing_is_stored(
    programs: ProgramRegistry, store: Store, backends: dict[str, list[str]], message: str
):
    with pytest.raises(BackendsRejected, match=message):
        programs.register(create("person_on_bike", backends=backends))
    assert store.list_programs() == []


def test_a_function_missing_from_the_catalog_is_refused(store: Store, zoo):
    catalog = BackendCatalog(backends=[spec for spec in zoo.specs if spec.function.value != "llm"])
    with pytest.raises(BackendsRejected, match="no backend is allowed for llm"):
        ProgramRegistry(store, catalog).register(create("landmark_city"))


def test_a_rejected_program_reports_problems_with_lines_and_is_not_stored(programs: ProgramRegistry, store: Store):
    source = "import os\n\ndef execute_command(image):\n    return image.__class__\n"
    with pytest.raises(ProgramInvalid) as caught:
        programs.register(ProgramCreate.model_validate({"source": source, "kind": "binary", "lambda": 0}))
    lines = {problem.line for problem in caught.value.problems}
    assert lines == {1, 4}
    assert "os" in str(caught.value)
    assert store.list_programs() == []


def test_a_program_without_a_routed_call_is_refused_saying_so(programs: ProgramRegistry, store: Store):
    source = 'def execute_command(image):\n    return "yes"\n'
    with pytest.raises(ProgramInvalid, match=r"makes no routed call .*find.*nothing to route"):
        programs.register(ProgramCreate.model_validate({"source": source, "kind": "binary", "lambda": 0}))
    assert store.list_programs() == []


def test_a_query_without_a_synthesizer_is_refused(programs: ProgramRegistry, store: Store):
    request = ProgramCreate.model_validate({"query": "Is there a dog?", "kind": "binary", "lambda": 0})
    with pytest.raises(SynthesisUnavailable, match=r"cannot synthesise programs .* send the program's source"):
        programs.register(request)
    assert store.list_programs() == []


def test_list_get_and_delete(programs: ProgramRegistry):
    first = programs.register(create("person_on_bike"))
    second = programs.register(create("leftmost_color", kind="open"))
    assert [p.id for p in programs.list_programs()] == [first.id, second.id]
    assert [p.id for p in programs.list_programs(limit=1, offset=1)] == [second.id]
    programs.delete(first.id)
    assert [p.id for p in programs.list_programs()] == [second.id]
    with pytest.raises(NotFound):
        programs.get(first.id)
    with pytest.raises(NotFound):
        programs.delete(first.id)
    with pytest.raises(NotFound):
        programs.compiled(first.id)


def test_compiled_programs_survive_a_new_registry(programs: ProgramRegistry, store: Store, catalog: BackendCatalog):
    public = programs.register(create("leftmost_color", kind="open"))
    again, program = ProgramRegistry(store, catalog).compiled(public.id)
    assert again == public
    assert [s.id for s in program.call_sites] == [s.id for s in public.call_sites]


def test_a_program_with_a_typo_is_refused_naming_the_line_and_the_closest_name(programs: ProgramRegistry):
    source = 'def execute_command(image):\n    image_patch = ImagePatch(image)\n    return image_patch.fnd("car")\n'
    with pytest.raises(ProgramInvalid) as caught:
        programs.register(ProgramCreate.model_validate({"source": source, "kind": "open", "lambda": 0}))
    assert [str(p) for p in caught.value.problems] == ["line 3: ImagePatch has no method 'fnd'; did you mean 'find'?"]


def test_a_stored_program_that_the_name_check_would_refuse_still_runs(programs: ProgramRegistry, store: Store):
    public = programs.register(create("person_on_bike"))
    typo = public.source + "\n\ndef unused(image):\n    return ImagePatch(image).fnd('x')\n"
    store.add_program(public.model_copy(update={"id": "f" * 32, "source": typo, "digest": "typo"}))
    _, program = ProgramRegistry(store, programs.catalog).compiled("f" * 32)
    assert program.source == typo  # registered before the check: it runs as it did


def named(name: object) -> ProgramCreate:
    return ProgramCreate.model_validate({"source": example("person_on_bike"), "kind": "binary", "name": name})


@pytest.mark.parametrize("name", ["Bikes at gate 3", "cam-2.left_door", "x" * 100, "  padded  "])
def test_a_program_may_have_a_name(programs: ProgramRegistry, name: str):
    public = programs.register(named(name))
    assert public.name == name.strip() and programs.get(public.id).name == name.strip()
    assert programs.register(create("person_on_bike")).name is None


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bikes/cars", "naïve", "a\nb", 7])
def test_a_name_is_letters_digits_spaces_and_dots_underscores_hyphens(name: object):
    with pytest.raises(ValidationError, match="name"):
        named(name)
