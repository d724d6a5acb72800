"""The synthesis prompt documents exactly the program API the runtime lets a program reach."""

from __future__ import annotations

import inspect

import pytest

from fmprog.program import ExecutionLimits, api, compile_program
from fmprog.program.callsites import ROUTED_METHODS
from fmprog.program.sandbox import _ATTRIBUTES, SAFE_BUILTINS, RunGuards
from router.synthesis import prompt

PATCH = "patch."


def _documented() -> tuple[set[str], set[str]]:
    """(global names, ImagePatch attributes) the prompt documents."""
    names, attributes = set(), set(prompt.PATCH_ATTRIBUTES)
    for entry in prompt.API:
        if entry.written.startswith(PATCH):
            attributes.add(entry.written.removeprefix(PATCH))
        elif entry.written != "patch attributes":
            names.add(entry.written)
    return names, attributes


def test_every_name_a_program_can_use_is_documented_and_nothing_else():
    namespace = RunGuards(ExecutionLimits(), 0.0).globals(lambda *args: None)
    program_names = {name for name in namespace if not name.startswith("_")}
    patch_attributes = set(_ATTRIBUTES[api.ImagePatch]) | set(ROUTED_METHODS)
    names, attributes = _documented()
    assert names == program_names
    assert attributes == patch_attributes
    public = {name for name in dir(api.ImagePatch) if not name.startswith("_")}
    assert attributes == public  # and the sandbox's allow-list is the class's whole public surface
    assert not names & set(SAFE_BUILTINS)


def test_each_entry_shows_the_runtime_object_it_names_with_its_parameters():
    namespace = RunGuards(ExecutionLimits(), 0.0).globals(lambda *args: None)
    runtime = {**namespace, "ImagePatch": api.ImagePatch.__init__, "llm_query": api.llm_query}  # llm_query is routed
    for entry in prompt.API:
        if entry.target is None:
            continue
        if entry.written.startswith(PATCH):
            assert getattr(api.ImagePatch, entry.written.removeprefix(PATCH)) is entry.target
        else:
            assert runtime[entry.written] is entry.target
        shown = entry.render().split(": ", 1)[0]
        for name, parameter in inspect.signature(entry.target).parameters.items():
            assert (name in shown) == (name != "self" and not name.startswith("_")), (entry.written, name)
            if parameter.default is not inspect.Parameter.empty and name in shown:
                assert f"{name}={parameter.default!r}" in shown


@pytest.mark.parametrize("kind", ["binary", "open"])
def test_the_prompt_is_a_conversation_with_examples_of_the_kind_then_the_task(kind: str):
    conversation = prompt.messages("Is there a gray cross?", kind)
    assert conversation[0]["role"] == "system" and "execute_command(image)" in conversation[0]["content"]
    assert "patch.find(object_name) -> list[ImagePatch]" in conversation[0]["content"]
    assert conversation[-1] == {"role": "user", "content": f"Task ({kind}): Is there a gray cross?"}
    examples = [e for e in prompt.EXAMPLES if e.kind == kind]
    assert len(examples) >= 3
    assert conversation[1:-1:2] == [prompt.task_turn(e.query, e.kind) for e in examples]
    assert [m["content"] for m in conversation[2:-1:2]] == [prompt.fenced(e.source) for e in examples]
    # The prefix is the same for every task of a kind, so an engine's prompt cache serves it.
    assert prompt.messages("How many stars?", kind)[:-1] == conversation[:-1]


@pytest.mark.parametrize("example", prompt.EXAMPLES, ids=lambda e: e.query)
def test_every_example_is_a_valid_program(example: prompt.Example):
    assert compile_program(example.source).call_sites


def test_repair_turns_show_the_program_the_error_advice_and_the_task_again():
    source = 'def execute_command(image):\n    stars = ImagePatch(image).find("star")\n    return stars.query("Why?")\n'
    error = "on test image 2, line 3: 'list.query' is not available to programs (sandbox_violation)"
    reply, request = prompt.repair_turns(prompt.fenced(source), error, "What is it?", "open", source)
    assert reply == {"role": "assistant", "content": prompt.fenced(source)}
    assert request["content"] == (
        f"That program is wrong: {error}. stars is a list of patches (find returns a list): use "
        "stars[0].query(...) or a loop.\nWrite the whole corrected program for the task (open): What is it?\n"
        "Reply with one ```python block."
    )
    attribute = source.replace('stars.query("Why?")', "stars.width > 3")
    assert prompt.hint(error.replace("query", "width"), attribute) == (
        "stars is a list of patches (find returns a list): use stars[0].width or a loop."
    )
    assert prompt.hint("line 1: import of 'os' is not allowed (programs may import: math, typing)") == (
        "Use only the API above."
    )
    assert prompt.hint("on test image 1, line 2: NameError: name 'foo' is not defined (runtime_error)") is None
    assert prompt.hint("on test image 4, line 3: IndexError: list index out of range (runtime_error)") == (
        'find returned an empty list on this image: check it before you index it (if not patches: return "N/A" '
        'for an open task, "no" for a binary one).'
    )


def test_the_api_version_is_a_hash_of_the_prompt(monkeypatch):
    assert len(prompt.API_VERSION) == 16 and int(prompt.API_VERSION, 16) >= 0
    version = prompt._version()
    assert version == prompt.API_VERSION
    monkeypatch.setattr(prompt, "REPAIR", prompt.REPAIR + " Thank you.")
    assert prompt._version() != version
