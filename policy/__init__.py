"""The policy: per-call-site backend decisions learned online from feedback.

Domain code only, no HTTP. ``policy.schemas`` holds the data that crosses boundaries
(``PolicySpec``, ``Decision``/``DecisionOut``, ``Feedback``, ``TrainReport``); ``policy.rewards``
the task rewards (the authors' binary/open-form values, or the paper's 0/1 loss);
``policy.algorithms`` the algorithms behind one ABC (``base.Policy``: ``decide``, ``observe``,
``train``, ``state_dict``/``load_state_dict``), found by name through an import-path registry:
``structured`` (default; the paper's structured REINFORCE with gradient Thompson sampling, U over
the last layer), ``fast`` (fixed frame features + per-site Bayesian linear Thompson sampling),
the authors' code variant ``structured_code`` (ResNet-18 on the raw frame, diagonal U, raw task
reward), and the baselines ``static``, ``random``, ``ucb1``, ``whole_query``, ``unstructured``.
Nothing heavy is imported until an algorithm is used.
"""
