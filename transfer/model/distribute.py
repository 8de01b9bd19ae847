"""Where models run: one device, every GPU of a host, or several hosts (``strategy``), and in what precision.

``strategy`` and ``mixed_precision`` in ``params.yaml`` apply to the three stages that run a model:
extract-features, train-head and fine-tune. A stage calls :func:`runtime` once, before it builds any model,
and builds and compiles its models inside ``runtime.scope()``.

- ``auto``: :class:`tf.distribute.MirroredStrategy` over every GPU when this host has two or more, else the
  default strategy (one device, TensorFlow's own placement).
- ``default``: one device.
- ``mirrored``: every GPU of this host; on a host without GPUs, every logical CPU device (one unless the
  process split its CPU, as the tests do to try distribution without GPUs).
- ``multi_worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` over the hosts that ``TF_CONFIG``
  names. Every host runs the same pipeline (``dvc exp run`` in its own checkout, with its own ``TF_CONFIG``);
  DVC decides the same stages everywhere, the three model stages compute together, and every host ends with
  the same outputs. Only the chief logs the execution to MLflow.

Batch sizes in ``params.yaml`` are global: with N replicas each gets ``batch_size / N`` per step.

Mixed precision (``mixed_float16``) computes in float16 and keeps float32 weights; the head's last layer
stays float32 so that probabilities and the loss are computed in full precision, and a saved model is
always rewritten as float32, so the deployable file behaves the same on any device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from transfer.errors import ParamError
from transfer.schema import DistributeParams

log = logging.getLogger(__name__)

MIXED_POLICY = "mixed_float16"


@dataclass(frozen=True)
class Runtime:
    """The strategy a stage runs under and what it implies.

    Attributes:
        strategy: the ``tf.distribute.Strategy`` (the default strategy on one device).
        distributed: whether more than one device or host takes part.
        chief: :func:`is_chief`, whether this process reports for its cluster.
        policy: the Keras dtype policy in force, ``float32`` or ``mixed_float16``.
    """

    strategy: Any
    distributed: bool
    chief: bool
    policy: str

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def scope(self):
        """The context to build and compile models in (a no-op on one device)."""
        return self.strategy.scope() if self.distributed else contextlib.nullcontext()


def _cluster_chief(config: dict) -> bool:
    """Whether this process is the chief of a ``TF_CONFIG`` cluster: the ``chief`` task, or worker 0 without one."""
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise ParamError(
            "strategy = 'multi_worker' is invalid here: TF_CONFIG is not set; expected TF_CONFIG to name the "
            "cluster's workers and this process's task (see docs/team-and-scale-out.md), or strategy auto"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParamError(f'TF_CONFIG is not valid JSON ({error}); expected {{"cluster": ..., "task": ...}}') from None
    if not isinstance(config, dict) or not config.get("cluster") or not isinstance(config.get("task"), dict):
        raise ParamError(f'TF_CONFIG = {text!r} is invalid: expected {{"cluster": {{...}}, "task": {{"type": "worker", '
                         '"index": 0}}')
    return config


def make_strategy(name: str) -> tuple[Any, bool]:
    """The ``tf.distribute`` strategy for a ``strategy`` param value.

    Returns:
        (strategy, distributed).
    """
    import tensorflow as tf

    if name == "multi_worker":
        _tf_config()  # refused here, with what is expected, rather than deep inside TensorFlow
        return tf.distribute.MultiWorkerMirroredStrategy(), True
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
        if len(devices) == 1:
            log.warning("strategy mirrored: this host has one device (%s); running on it alone", devices[0])
        return tf.distribute.MirroredStrategy(devices), len(devices) > 1
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus), True
    return tf.distribute.get_strategy(), False


def set_precision(setting: bool | str) -> str:
    """Apply ``mixed_precision`` (``auto``, True or False) as Keras' global dtype policy; returns its name."""
    import keras
    import tensorflow as tf

    mixed = setting is True or (setting == "auto" and bool(tf.config.list_logical_devices("GPU")))
    policy = MIXED_POLICY if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def is_chief() -> bool:
    """Whether this process is the one that reports: no ``TF_CONFIG`` cluster, or its chief."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return True
    try:
        return _cluster_chief(json.loads(text))
    except (ValueError, TypeError, AttributeError):
        return True  # a broken TF_CONFIG is the model stages' error to report, with what is expected


def runtime(settings: DistributeParams) -> Runtime:
    """Set up the strategy and precision a stage runs under. Call before building any model."""
    strategy, distributed = make_strategy(settings.strategy)
    policy = set_precision(settings.mixed_precision)
    setup = Runtime(strategy=strategy, distributed=distributed, chief=is_chief(), policy=policy)
    log.info("strategy %s: running on %d replica(s) (%s), %s", settings.strategy, setup.replicas,
             type(strategy).__name__, policy)
    return setup
