"""The policy: per-call-site backend decisions learned online from feedback.

Domain code only, no HTTP (``app`` holds the routes). What the router sends and gets back is the
shared contract, :mod:`fmprog.contract` (``PolicySpec``, ``PolicyDecision``, ``Feedback``, the
rewards); ``policy.decisions`` the decision as the policy keeps it until its feedback
(``PendingDecision``: the contract's decision plus the context it was made on); ``policy.schemas``
the wire types of the policy's own API; ``policy.snapshots`` a policy to bytes and back.
``policy.algorithms`` holds the algorithms behind one ABC (``base.Policy``: ``decide``, ``observe``,
``train``, ``state_dict``/``load_state_dict``), found by name through an import-path registry that
also checks a spec (``check_spec``: a known algorithm, hyper-parameters it takes, call sites it can
serve): ``structured`` (default; the paper's structured REINFORCE with gradient Thompson sampling, U
over the last layer), ``fast`` (fixed frame features + per-site Bayesian linear Thompson sampling),
the authors' code variant ``structured_code`` (ResNet-18 on the raw frame, diagonal U, raw task
reward), and the baselines ``static``, ``random``, ``ucb1``, ``whole_query``, ``unstructured``.
Nothing heavy is imported until an algorithm is used.
"""
