"""The whole of ``params.yaml`` checked before any stage does any work.

Each stage reads only its own keys (that is what keeps DVC's dependencies exact), so a bad value in a later
stage's section would otherwise surface only after the earlier stages had spent minutes. Every stage calls
:func:`check_params` first: a wrong type, an out-of-range value, an unknown backbone, a missing weights file,
an image size the backbone refuses, more layers to unfreeze than the backbone has, or a key nobody reads (a
typo) stops it with one line naming the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from transfer.errors import ParamError
from transfer.model.registry import LAYER_COUNTS, resolve
from transfer.params import PARAMS_FILE, Params, flatten
from transfer.schema import (
    UNFREEZE_ALL,
    read_backbone,
    read_curation,
    read_data,
    read_distribute,
    read_evaluate,
    read_features,
    read_fine_tune,
    read_head,
    read_quality,
    read_split,
)


def check_all(params: Params) -> None:
    """Read every section of ``params`` as the stages will, and refuse keys that none of them reads.

    Raises:
        ParamError: naming the first bad key, its value and what is allowed.
    """
    params.seed()
    read_data(params)
    read_curation(params)
    read_split(params)
    choice = resolve(read_backbone(params), params.source)
    read_features(params)
    read_distribute(params)
    read_head(params)
    read_quality(params)
    tune = read_fine_tune(params)
    unfreeze = tune.unfreeze
    layers = None if choice.layer else LAYER_COUNTS.get(choice.spec.name)  # a cut backbone: counted when built
    if isinstance(unfreeze, int) and layers is not None and unfreeze > layers and tune.training.epochs:
        raise params.fail("fine_tune.unfreeze", unfreeze, f"{UNFREEZE_ALL}, a layer name, or a number of top layers "
                          f"up to {layers} ({choice.spec.name} has {layers})")
    evaluate = read_evaluate(params)
    if evaluate.gradcam and not choice.spec.pretrained:
        # Grad-CAM explains the last feature map before its average pooling; these flatten theirs.
        raise params.fail("evaluate.gradcam", evaluate.gradcam, f"0 with backbone {choice.spec.name}: it is trained "
                          "from scratch and flattens its feature map, so there is no pooled map to explain")
    unknown = sorted(set(flatten(params.tree)) - params.keys_read)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(params.keys_read), n=1)
        hint = f"did you mean {close[0]}?" if close else "remove it"
        raise ParamError(f"{params.source}: {key} is not a known param; {hint}")


def check_params(path: str | Path = PARAMS_FILE) -> None:
    """Check the params file at ``path`` as a whole (see :func:`check_all`)."""
    check_all(Params.load(path))
