"""The router service: registers programs, answers frames, forwards feedback.

Domain code, knowing nothing of HTTP (the FastAPI routes in ``app`` only map its errors). What it
sends the policy and how answers are scored is the shared contract, :mod:`fmprog.contract`; the
router imports nothing of the policy.

- ``schemas``: wire types (``ProgramCreate``/``ProgramPublic``, ``FrameResult``, ``FeedbackIn``/
  ``FeedbackResult``) and the stored ``FrameRecord`` (one answered frame: its decision, trace,
  costs, answer) and ``FeedbackRecord``; a trace is the runtime's ``fmprog.program.Invocation``
  list, stored and returned as it was run.
- ``store.Store``: persistence of programs, answers, feedback, label counts and the policy outbox
  on SQLite (the default) or PostgreSQL (several routers), SQLAlchemy Core over ``tables``, the
  schema migrated by Alembic (``migrations``) on open; thread-safe; feedback is resolved once per
  decision, whichever router takes it; old decisions are pruned (retention).
- ``candidates``: each function's candidate backends and costs, from the catalog.
- ``programs.ProgramRegistry``: validate a program with the runtime (or synthesise it first, for
  a task in words), resolve its candidates, have its policy spec checked, store it, keep it
  compiled with what of a frame its policy reads; delete keeps its answers open to feedback.
- ``synthesis``: a task in words to a program (its own package: the synthesizer, its prompt, the
  program in a model's reply, the dry run's scenes); ``fmprog program synth`` is the launcher's.
- ``deciding.Deciding``: a frame's decision, in one place: the policy asked (sent what its
  algorithm reads of the frame: nothing, a thumbnail or the frame) behind its circuit breaker and
  readiness probe, or the fallback (all-cheapest by default; the cheapest once a cost budget is
  spent) with its reason; the gates checked; the teacher's decision; the fallback run instead of a
  decision that does not fit; cameras' reuse decisions.
- ``answering.Answerer``: run a program on a frame under what ``deciding`` hands it (a backend per
  call site, checked once by the executor, or a ``GateDecider``), record the answer and its trace;
  a frame none of whose backends could be reached says so.
- ``feedback.FeedbackHandler``: the task reward (``fmprog.rewards.score_answer``) of the stored
  answer against the label, idempotent per decision; returns reward, executed sites and their costs.
- ``policy_client``: the policy service over HTTP (check, register, decide on the frame's bytes,
  its thumbnail or nothing, feedback, delete); ``outbox``: messages for the policy kept until delivered, in order
  per program, each claimed by one router.
- ``policy_view``: what a program's policy has learned, as its recent decisions' traces show it:
  each backend's share of the calls per call site and context bucket (``GET /programs/{id}/policy``).
- ``errors``: ``NotFound`` (404), ``Conflict`` (409), ``Unavailable`` (503), the other
  ``RouterError``s (422).
"""
