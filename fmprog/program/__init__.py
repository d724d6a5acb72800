"""The program runtime: the program language, validation, call sites and the sandboxed executor."""

from fmprog.program.api import Frame, ImagePatch
from fmprog.program.callsites import CallSite
from fmprog.program.compiler import Program, compile_program
from fmprog.program.deciders import (
    CascadeDecider,
    Decider,
    EarlierOutput,
    GateDecider,
    InvocationContext,
    StaticDecider,
    context_vector,
    escalation_vector,
)
from fmprog.program.errors import InvalidDecision, Problem, ProgramHalt, ProgramRejected
from fmprog.program.executor import (
    Decision,
    Executor,
    Invocation,
    InvocationFeatures,
    MemoHit,
    ProgramError,
    Trace,
    gate_vectors,
)
from fmprog.program.sandbox import ExecutionLimits

__all__ = [
    "CallSite",
    "CascadeDecider",
    "Decider",
    "Decision",
    "EarlierOutput",
    "ExecutionLimits",
    "Executor",
    "Frame",
    "GateDecider",
    "ImagePatch",
    "InvalidDecision",
    "Invocation",
    "InvocationContext",
    "InvocationFeatures",
    "MemoHit",
    "Problem",
    "Program",
    "ProgramError",
    "ProgramHalt",
    "ProgramRejected",
    "StaticDecider",
    "Trace",
    "compile_program",
    "context_vector",
    "escalation_vector",
    "gate_vectors",
]
