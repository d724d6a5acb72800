"""A program's candidate backends: for each function it calls, the backends the policy may choose
from (all of the catalog's, or those the registration allows), with their costs."""

from __future__ import annotations

from fmprog.backends.config import BackendCatalog, Function
from router.errors import BackendsRejected
from router.schemas import CandidateBackend


def candidate_backends(
    catalog: BackendCatalog, allowed: dict[Function, list[str]] | None, functions: set[Function]
) -> dict[Function, list[CandidateBackend]]:
    """The backends the policy may choose for each function a program uses.

    ``allowed`` restricts a function to the named backends (in the order given); a function it
    leaves out may use every backend of that function in the catalog, in catalog order. Raises
    BackendsRejected for an unknown name, a backend of another function, or a used function left
    with no backend.
    """
    allowed = allowed or {}
    problems = []
    for function, names in allowed.items():
        for name in names:
            try:
                spec = catalog.get(name)
            except KeyError:
                problems.append(f"unknown backend {name!r} allowed for {function.value}")
                continue
            if spec.function != function:
                problems.append(f"backend {name!r} serves {spec.function.value}, not {function.value}")
    if problems:
        raise BackendsRejected("; ".join(problems))
    candidates = {}
    for function in sorted(functions):
        if function in allowed:
            specs = [catalog.get(name) for name in dict.fromkeys(allowed[function])]
        else:
            specs = catalog.for_function(function)
        if not specs:
            raise BackendsRejected(f"no backend is allowed for {function.value}, which the program calls")
        candidates[function] = [CandidateBackend(name=spec.name, cost=spec.cost) for spec in specs]
    return candidates
