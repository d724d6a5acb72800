"""Build the ``cascade`` policy's warm-start prior from held-out material.

    python -m benchmarks.cascade_prior [--material zoo|video] [--out FILE]

``--material zoo`` (the default; writes ``policy/priors/cascade.json``): queries of its own (the
track's templates on other objects; none is a track query) stream scenes from the seed range
``CASCADE_PRIOR`` (``fmprog.scene.seeds``), which no training frame of the zoo, evaluation set or
benchmark split shares, answered by the zoo's backends. ``--material video``: the video track's
templates with other thresholds, sides and colours on OpenCV's other sample clips
(``PRIOR_CLIPS``; never the track's ``vtest.avi``), answered by the real-image backends and
labelled as the track is, by what the dearest backends answer. That prior was measured worse than
none on the video track and is not shipped (``benchmarks/results/experiments/real-image-prior``).

The evidence is keyed by role (``policy.algorithms.cascade.role_key``: what a model is to any
configuration), and the file records the backends it was built with, so a policy over those
backends finds it first and one over others by each backend's rank by cost.

Two kinds of evidence, pooled per model key (``policy.algorithms.evidence``) into the prior file
``cascade`` policies start from:

- *Which detector to ask first*, counterfactually: every frame runs under every configuration of
  the program (a backend per call site, as the benchmark's table), so each detector's task reward
  is known on every frame the site ran, with the rest of the program averaged over; each
  detector gets the evidence ``(its mean reward - the detectors' mean) / sigma`` at the site's
  choice features on every such frame, weighted by the inverse of that target's own spread (a
  policy's models assume one reward's noise per observation; these targets are 0 wherever the
  detectors agree). A learning policy sees one detector per frame, and with a positive in a
  hundred frames the few thousand frames here cannot tell the detectors apart that way (two
  builds of that kind locked onto opposite detectors); paired on the same frames, they can.
- *When to re-ask a dearer model* (and the single first choice of VQA, LLM and OCR sites), from
  use: each stream runs through the executor under a fresh ``cascade`` policy with no prior
  (nothing shipped, nothing shared) at lambda ``--lam``, learning from the label after every
  frame, as the benchmark replays a track, except that every first answer of a site that can
  escalate is re-asked, so each gets its pair.

The evidence is of task rewards only, so the prior holds at any lambda; the lambda here only
steers which first choices the runs explore. Deterministic for a given zoo and configuration;
about 21 minutes on 2 cores for the zoo (5,000 frames a binary query, so that the escalation gate
of a binary program starts from 626 pairs instead of 140: VQA runs only on frames with a
candidate), about 4 for the clips.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from benchmarks.vqa.cache import OutputCache, cached_registry
from benchmarks.vqa.harness import configurations, load_backends, policy_spec, replay_gated
from benchmarks.vqa.queries import (
    QuerySpec,
    all_queries,
    at_least,
    both,
    count,
    exists,
    extreme,
    french,
    larger,
    negation,
    relation,
    sides,
)
from benchmarks.vqa.tracks import ImageResolver, TrackQuery, build_streams, video_ref
from benchmarks.vqa.video import VIDEO, VIDEO_QUERIES, VideoQuery, people_query, reference_labels
from fmprog.backends.base import BackendRegistry
from fmprog.backends.config import Function
from fmprog.contract import PolicySpec, SiteGate
from fmprog.program import Decider, Executor, GateDecider, InvocationContext, Program, compile_program, context_vector
from fmprog.rewards import TaskKind, task_reward
from fmprog.scene.seeds import CASCADE_PRIOR
from fmprog.vision.video import SAMPLE_VIDEOS, VideoFrames
from policy.algorithms import build_policy
from policy.algorithms.cascade import (
    CHOICE_FEATURES,
    CHOICE_INDEX,
    PRIOR_FEATURES,
    CascadeParams,
    reward_sigma,
    role_key,
)
from policy.algorithms.evidence import Evidence, dump_prior, pooled

MIN_SPREAD = 0.01
"""The least variance (in sigma^2) the detector evidence is weighted by: it then counts as at most
a hundred observations of one reward's noise per frame."""


def prior_queries() -> list[QuerySpec]:
    """The prior's queries: the tracks' templates on other objects."""
    return [
        exists("color", color="gray", shape="triangle"),
        exists("color", color="orange", shape="circle"),
        exists("color", size="large", color="blue", shape="star"),
        exists("texture", texture="dotted", color="red", shape="triangle"),
        relation("blue", "square", "above", "red", "circle"),
        at_least(2, "color", color="purple", shape="circle"),
        both("white", "square", "green", "circle"),
        extreme("leftmost", "circle"),
        negation("square", "striped"),
        count("color", color="orange"),
        larger("red", "star", "blue", "circle"),
        sides("purple"),
        french("hexagon"),
    ]


class _Escalating(GateDecider):
    """The policy's gates for first choices, and every answer re-asked where a site can escalate:
    each first answer gets its pair."""

    def __init__(self, gates: Mapping[str, SiteGate], fixed: Mapping[str, str]):
        super().__init__(gates, fixed)
        self.targets = {site: gate.escalate_to for site, gate in gates.items() if gate.escalate_to is not None}
        self.last: tuple[InvocationContext, str] | None = None

    def decide(self, context: InvocationContext) -> str:
        backend = super().decide(context)
        self.last = (context, backend)
        return backend

    def escalate(self, context: InvocationContext, answer: str) -> str | None:
        target = self.targets.get(context.site_id)
        if target is None or self.last is None or self.last[0] is not context or self.last[1] == target:
            return None
        return target


class _Recording(Decider):
    """A fixed configuration that keeps the choice features of each site's first invocation."""

    def __init__(self, configuration: dict[str, str]):
        self.configuration = configuration
        self.features: dict[str, np.ndarray] = {}

    def decide(self, context: InvocationContext) -> str:
        if context.site_id not in self.features:
            self.features[context.site_id] = np.asarray(context_vector(context))[CHOICE_INDEX]
        return self.configuration[context.site_id]


def detector_evidence(
    spec: PolicySpec,
    program: Program,
    executor: Executor,
    backends: BackendRegistry,
    frames: list[np.ndarray],
    labels: list[str],
) -> dict[str, Evidence]:
    """Each detector's task reward on each frame against the detectors' mean, every configuration
    of the rest of the program averaged over, as evidence for the detect sites' first choices."""
    params = CascadeParams.model_validate(spec.hyperparameters)
    sigma = reward_sigma(params)
    sites = [site for site in spec.sites if site.function == Function.detect and len(site.backends) > 1]
    evidence = {
        role_key(params, site, "choice", name): Evidence.empty(len(CHOICE_FEATURES))
        for site in sites
        for name in site.backend_names
    }
    squares = dict.fromkeys(evidence, 0.0)
    configs = configurations(program, backends)
    for frame, label in zip(frames, labels, strict=True):
        runs = []
        for config in configs:
            recording = _Recording(config)
            trace = executor.run(program, frame, recording)
            answer = "" if trace.answer is None else str(trace.answer)
            runs.append((config, recording.features, task_reward(params.kind, answer, label)))
        for site in sites:
            seen = next((features[site.id] for _, features, _ in runs if site.id in features), None)
            means = {}
            for name in site.backend_names:
                rewards = [r for config, features, r in runs if config[site.id] == name and site.id in features]
                if rewards:
                    means[name] = float(np.mean(rewards))
            if len(means) < len(site.backend_names) or seen is None:
                continue  # the site did not run under every detector on this frame
            level = float(np.mean(list(means.values())))
            for name, mean in means.items():
                key = role_key(params, site, "choice", name)
                evidence[key].add(seen, (mean - level) / sigma)
                squares[key] += ((mean - level) / sigma) ** 2
    # a policy's models assume one reward's noise (sigma) per observation; these targets, a
    # detector's reward against the other's on the same frame, are 0 wherever the detectors agree
    # and their noise is their own spread: weighted by its inverse, they count as what they know
    weighted = {}
    for key, e in evidence.items():
        if e.n:
            mean = e.xty[0] / e.n  # the bias feature is 1
            spread = max(squares[key] / e.n - mean**2, MIN_SPREAD)
            weighted[key] = Evidence(e.xtx / spread, e.xty / spread, e.n)
    return weighted


def zoo_streams(args: argparse.Namespace) -> list[tuple[TaskKind, TrackQuery]]:
    """The synthetic zoo's material: the prior's own queries on scenes of its own seed range."""
    specs = prior_queries()
    taken = {q.query for q in all_queries()} & {q.query for q in specs}
    if taken:
        raise SystemExit(f"prior queries must not be track queries: {sorted(taken)}")
    streams = build_streams(
        specs,
        binary_frames=args.binary_frames,
        binary_positives=max(1, args.binary_frames // 100),
        open_frames=args.open_frames,
        seeds=CASCADE_PRIOR,
    )
    return [(spec.kind, query) for spec, query in zip(specs, streams, strict=True)]


def video_prior_queries() -> list[VideoQuery]:
    """The real-image prior's queries: the video track's templates with other thresholds, sides
    and colours (none is a track query)."""
    return [
        people_query(
            "numerical", "Is there more than one person?", "    return bool_to_yesno(len(people) > $n)\n", n=1
        ),
        people_query(
            "numerical",
            "How many people are in the right half of the frame?",
            "    return str(len([p for p in people if p.horizontal_center > image_patch.width / 2]))\n",
        ),
        people_query(
            "spatial",
            "Is anyone in the right third of the frame?",
            "    for person in people:\n"
            "        if person.horizontal_center > image_patch.width * 2 / 3:\n"
            '            return "yes"\n'
            '    return "no"\n',
        ),
        people_query(
            "spatial",
            "Is anyone in the top half of the frame?",
            "    for person in people:\n"
            "        if person.vertical_center > image_patch.height / 2:\n"
            '            return "yes"\n'
            '    return "no"\n',
        ),
        people_query(
            "relation",
            "Are two people within 40 pixels of each other?",
            "    for i in range(len(people)):\n"
            "        for j in range(i + 1, len(people)):\n"
            "            if distance(people[i], people[j]) < 40:\n"
            '                return "yes"\n'
            '    return "no"\n',
        ),
        people_query(
            "color",
            "Is anyone wearing blue?",
            "    for person in people:\n"
            '        if person.verify_property("person", "blue"):\n'
            '            return "yes"\n'
            '    return "no"\n',
        ),
        people_query(
            "color",
            "What color is the rightmost person wearing?",
            "    if len(people) == 0:\n"
            '        return "N/A"\n'
            "    people.sort(key=lambda p: -p.horizontal_center)\n"
            '    return people[0].query("What color is this?")\n',
        ),
    ]


PRIOR_CLIPS = ("Megamind.avi", "tree.avi")
"""The real-image prior's footage: OpenCV's other sample clips (a film trailer's people, a tree in
the wind), never a frame of the video track's ``vtest.avi``."""


def video_streams(args: argparse.Namespace, backends: BackendRegistry) -> list[tuple[TaskKind, TrackQuery]]:
    """The real-image material: the prior's own queries on other clips than the video track's,
    labelled as the track is (what the dearest backends answer)."""
    queries = video_prior_queries()
    taken = {q.query for q in VIDEO_QUERIES} & {q.query for q in queries}
    if taken or VIDEO in PRIOR_CLIPS:
        raise SystemExit(f"prior queries and clips must not be the video track's: {sorted(taken)}")
    streams = []
    for clip in PRIOR_CLIPS:
        video = VideoFrames(args.videos_root / clip)
        count = len(video) if args.video_frames is None else min(args.video_frames, len(video))
        frames = [video[i] for i in range(count)]
        labels = reference_labels(queries, frames, backends)
        refs = [video_ref(clip, i) for i in range(count)]
        streams += [
            ("open", TrackQuery(q.query, q.type, q.program, refs, answers))
            for q, answers in zip(queries, labels, strict=True)
        ]
    return streams


def build(args: argparse.Namespace) -> tuple[dict[str, Evidence], str, dict[str, list[str]]]:
    """The prior's evidence per role key, its description and the backends it was built with."""
    cache = OutputCache(args.cache)
    costs = None if args.costs == "own" else Path(args.costs)
    functions = {"detect", "vqa"} if args.material == "video" else None
    backends = cached_registry(load_backends(args.config, costs, functions), cache)
    executor = Executor(backends)
    images = ImageResolver(videos_root=args.videos_root)
    streams = zoo_streams(args) if args.material == "zoo" else video_streams(args, backends)
    cache.flush()
    evidence: list[dict[str, Evidence]] = []
    built_with: dict[str, list[str]] = {}
    frames_seen = 0
    for kind, query in streams:
        program = compile_program(query.program)
        policy_ = policy_spec(program, backends, args.lam, "cascade", seed=0, kind=kind)
        policy_ = policy_.model_copy(
            update={"hyperparameters": {**policy_.hyperparameters, "warm_start": False, "share": False}}
        )
        policy = build_policy(policy_)
        for site in policy_.sites:
            built_with[site.function.value] = [b.name for b in sorted(site.backends, key=lambda b: (b.cost, b.name))]
        frames = [images(ref) for ref in query.frames]
        started = time.perf_counter()
        replay_gated(policy_, executor, program, frames, query.labels, kind, policy=policy, decider=_Escalating)
        detectors = detector_evidence(policy_, program, executor, backends, frames, query.labels)
        evidence.append(
            {policy.roles[key]: e for key, e in policy.evidence().items() if policy.roles[key] not in detectors}
        )
        evidence.append(detectors)
        cache.flush()
        frames_seen += len(frames)
        print(f"{kind:6} {query.query}: {len(frames)} frames, {time.perf_counter() - started:.0f} s", flush=True)
    if args.material == "zoo":
        source = f"held-out zoo scenes (seeds from {CASCADE_PRIOR.start})"
    else:
        source = f"frames of {', '.join(PRIOR_CLIPS)} (not the video track's {VIDEO})"
    about = (
        f"built by python -m benchmarks.cascade_prior --material {args.material} from {len(streams)} query streams "
        f"of its own over {frames_seen} {source}, backends {args.config} priced by {args.costs}, lambda {args.lam:g}"
    )
    return pooled(*evidence), about, built_with


DEFAULTS = {
    "zoo": ("policy/priors/cascade.json", "fmprog/configs/synthetic.yaml", "fmprog/configs/gpu.yaml"),
    # measured worse than no prior on the video track: not shipped (see its README there)
    "video": ("benchmarks/results/experiments/real-image-prior/cascade-real.json", "fmprog/configs/real.yaml", "own"),
}
"""Per material: the prior file, the configuration it is built for and the cost table."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--material", choices=sorted(DEFAULTS), default="zoo")
    parser.add_argument("--out", type=Path, help="default: policy/priors/cascade.json (zoo); for video, see DEFAULTS")
    parser.add_argument("--config", type=Path, help="default: synthetic.yaml (zoo), real.yaml (video)")
    parser.add_argument("--costs", help="a backend configuration that prices them, or 'own' (default: gpu.yaml, own)")
    parser.add_argument("--cache", type=Path, help="keep backend outputs in this SQLite file for the next run")
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--binary-frames", type=int, default=5000)
    parser.add_argument("--open-frames", type=int, default=300)
    parser.add_argument("--videos-root", type=Path, default=SAMPLE_VIDEOS)
    parser.add_argument("--video-frames", type=int, help="only the first N frames of each clip (a quick look)")
    args = parser.parse_args()
    out, config, costs = DEFAULTS[args.material]
    args.out, args.config, args.costs = args.out or Path(out), args.config or Path(config), args.costs or costs
    started = time.perf_counter()
    models, about, built_with = build(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_prior(models, dict(PRIOR_FEATURES), about, built_with) + "\n")
    print(f"{len(models)} models in {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
