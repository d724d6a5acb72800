"""Program synthesis: a task in words to a program the router can register.

- ``synthesizer.ProgramSynthesizer``: the model's program, validated, dry-run on generated frames,
  repaired with the model's help, cached by task, with warnings for what it is unsure of;
- ``prompt``: the prompt, built from the program API's own signatures and docstrings;
- ``reply``: the program in a model's reply, and whether a dry-run answer fits the task;
- ``scenes``: the generated frames a dry run uses, chosen for the nouns the program asks about.

The command line (``fmprog program synth``) is the launcher's (``launcher.program_synth``).
"""

from router.synthesis.synthesizer import (
    ChatModel,
    EngineChatModel,
    ProgramSynthesizer,
    SynthesisResult,
    normalize_query,
    synthesis_model,
)

__all__ = [
    "ChatModel",
    "EngineChatModel",
    "ProgramSynthesizer",
    "SynthesisResult",
    "normalize_query",
    "synthesis_model",
]
