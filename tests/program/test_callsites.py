"""Call-site identity, families, and the attribution of nested invocations."""

from __future__ import annotations

from fmprog.backends import Function
from fmprog.program import compile_program
from tests.fakes import all_of, box, run


def test_textually_identical_calls_are_distinct_sites():
    program = compile_program(
        "def execute_command(image):\n"
        "    p = ImagePatch(image)\n"
        '    a = p.exists("cat")\n'
        '    b = p.exists("cat")\n'
        '    return p.exists("cat") and p.exists("cat")\n'
    )
    assert [s.id for s in program.call_sites] == ["exists@3:10", "exists@4:10", "exists@5:13", "exists@5:33"]
    assert all(s.source == 'p.exists("cat")' for s in program.call_sites)


def test_ids_are_stable_and_computed_arguments_keep_their_identity():
    source = """
def execute_command(image):
    p = ImagePatch(image)
    for noun in ["cat", "dog"]:
        if p.exists(noun):
            return p.query(f"What color is the {noun}?")
    return p.llm_query("a" + "b")
"""
    first, second = compile_program(source), compile_program(source)
    assert first.call_sites == second.call_sites
    assert [(s.id, s.method, s.function, s.line) for s in first.call_sites] == [
        ("exists@5:13", "exists", Function.detect, 5),
        ("query@6:21", "query", Function.vqa, 6),
        ("llm_query@7:13", "llm_query", Function.llm, 7),
    ]


def test_chained_calls_on_one_line_are_separate_sites():
    program = compile_program('def execute_command(image):\n    return ImagePatch(image).find("a")[0].find("b")')
    assert [s.id for s in program.call_sites] == ["find@2:29", "find@2:42"]


def test_site_families():
    source = """
def execute_command(image):
    p = ImagePatch(image)
    n = "7"
    return [p.find("x"), p.exists("x"), p.exists("3"), p.exists("number five"), p.exists(n),
            p.verify_property("x", "red"), p.query("q"), p.simple_query("q"), p.best_text_match(["a"]),
            p.llm_query("q"), llm_query("q")]
"""
    families = [(s.method, s.function.value) for s in compile_program(source).call_sites]
    assert families == [
        ("find", "detect"), ("exists", "detect"), ("exists", "vqa"), ("exists", "vqa"), ("exists", "detect"),
        ("verify_property", "vqa"), ("query", "vqa"), ("simple_query", "vqa"), ("best_text_match", "vqa"),
        ("llm_query", "llm"), ("llm_query", "llm"),
    ]  # fmt: skip


def test_string_methods_with_routed_names_are_not_routed(executor, frame):
    source = """
def execute_command(image):
    s = "a cat"
    return [s.find("cat"), "xyz".find("z")]
"""
    program = compile_program(source)
    assert [s.id for s in program.call_sites] == ["find@4:14"]  # the literal receiver is excluded
    trace = executor.run(program, frame, all_of(program, "small"))
    assert trace.answer == [2, 2] and trace.invocations == [] and trace.executed_sites == []


def test_nested_invocations_belong_to_the_site_the_program_wrote(executor, zoo, frame):
    zoo.set_boxes({"cat": [box(1, 1, 9, 9)]})
    source = """
def execute_command(image):
    p = ImagePatch(image)
    return p.exists("cat") and p.verify_property("cat", "black")
"""
    trace = run(executor, source, frame)
    assert [(i.site, i.function.value) for i in trace.invocations] == [
        ("exists@4:13", "detect"),
        ("verify_property@4:33", "vqa"),
    ]
    assert len(zoo.models["detect-small"].calls) == 1  # exists' inner find is not a second invocation
