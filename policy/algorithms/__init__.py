"""Policy algorithms, one module each behind :class:`policy.algorithms.base.Policy`.

Algorithms are found by import path, so nothing heavy (torch) is imported until one is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from fmprog.contract import PolicySpec
    from policy.algorithms.base import Policy

ALGORITHMS: dict[str, str] = {
    "structured": "policy.algorithms.structured:StructuredPolicy",
    "structured_code": "policy.algorithms.structured_code:StructuredCodePolicy",
    "fast": "policy.algorithms.fast:FastPolicy",
    "static": "policy.algorithms.static:StaticPolicy",
    "random": "policy.algorithms.uniform:RandomPolicy",
    "ucb1": "policy.algorithms.ucb1:UCB1Policy",
    "whole_query": "policy.algorithms.whole_query:WholeQueryPolicy",
    "unstructured": "policy.algorithms.unstructured:UnstructuredPolicy",
    "cascade": "policy.algorithms.cascade:CascadePolicy",
}


def algorithm_class(name: str) -> type[Policy]:
    """The class registered under ``name`` (imports its module)."""
    try:
        path = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (known: {', '.join(sorted(ALGORITHMS))})") from None
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def check_spec(spec: PolicySpec) -> Any:
    """Whether a policy can be built from ``spec``: a known algorithm, hyper-parameters its
    ``Params`` model takes, call sites it can serve. Returns the validated hyper-parameters
    (defaults filled in); raises ValueError naming the problem."""
    cls = algorithm_class(spec.algorithm)
    try:
        params = cls.Params.model_validate(spec.hyperparameters)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(('hyperparameters', *map(str, e['loc'])))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(problems) from None
    if cls.max_sites is not None and len(spec.sites) > cls.max_sites:
        raise ValueError(
            f"{spec.algorithm} decides for at most {cls.max_sites} call sites in time (its cost grows with each "
            f"site's network); this program has {len(spec.sites)}: choose fast or cascade"
        )
    cls.check_spec(spec)
    return params


def build_policy(spec: PolicySpec, evidence: Mapping[str, Any] | None = None) -> Policy:
    """A fresh policy for ``spec`` (the algorithm checks it; :func:`check_spec` names the problem
    better), starting from ``evidence`` pooled from other programs where the algorithm pools it."""
    cls = algorithm_class(spec.algorithm)
    if cls.pools_evidence:
        return cls(spec, evidence=evidence)  # type: ignore[call-arg]
    return cls(spec)


__all__ = ["ALGORITHMS", "algorithm_class", "build_policy", "check_spec"]
