"""Training: a run from a config (:mod:`~.run`: ``TrainConfig``, ``train``), resumable fitting
(:mod:`~.resilience`), ANN hard-negative mining (:mod:`~.mining`) and strategies
(:mod:`~.strategy`). ``TrainConfig``, ``train``, ``make_strategy``,
``learning_rate_schedule`` and ``WarmupDecay`` are importable from here; they are loaded
on first use."""

from samtone_tf._compat import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    name: "samtone_tf.training.run"
    for name in ("TrainConfig", "train", "make_strategy", "learning_rate_schedule",
                 "WarmupDecay", "LOSS_KEYS", "SCHEDULES")})
