"""The models of fine-tuning: the supernet loaded once per task head (`TaskModels`), a seeded task
head, and each arch's inherited slice extracted into a dense model (`inherit`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..arch import Arch, Scheme
from ..hf import load_model
from ..modeling import (AutoTinyBertForQuestionAnswering, AutoTinyBertForSequenceClassification,
                        AutoTinyBertPreTrainedModel, extract_submodel)
from ..tasks import is_squad
from .features import TaskData


# ---- models: the supernet loaded once per task head; each arch trains its own extracted copy ----
class TaskModels:
    """One supernet task model per head kind (classification with n labels, QA), each loaded
    from the model directory once and kept on the CPU. It is never trained: every arch is
    fine-tuned in a dense copy of its slice (`inherit`), so the supernet stays pristine."""

    def __init__(self, model_dir: Path, scheme: Scheme | None, pooling: str | None = None):
        self.model_dir, self.scheme = model_dir, scheme
        self.overrides = {} if pooling is None else {"classifier_pooling": pooling}
        self._cache: dict[tuple, AutoTinyBertPreTrainedModel] = {}

    def get(self, data: TaskData) -> AutoTinyBertPreTrainedModel:
        key = ("qa",) if is_squad(data.task) else ("cls", data.num_labels)
        if key not in self._cache:
            if key[0] == "qa":
                model = load_model(self.model_dir, AutoTinyBertForQuestionAnswering, self.scheme)
            else:
                model = load_model(self.model_dir, AutoTinyBertForSequenceClassification,
                                   self.scheme, num_labels=data.num_labels, **self.overrides)
            for p in model.parameters():
                p.requires_grad_(False)
            self._cache[key] = model
        return self._cache[key]


@torch.no_grad()
def init_head(model: AutoTinyBertPreTrainedModel, seed: int) -> None:
    """Draw the supernet's task head from `seed` alone (the original drew it from the global
    RNG after its per-seed reset), so an arch's start does not depend on the archs before it."""
    head = model.qa_outputs if hasattr(model, "qa_outputs") else model.classifier
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(head.weight.shape).normal_(0.0, model.config.initializer_range, generator=g)
    head.weight.copy_(w.to(head.weight))
    head.bias.zero_()


def inherit(supernet: AutoTinyBertPreTrainedModel, arch: Arch, seed: int,
            device: torch.device) -> AutoTinyBertPreTrainedModel:
    """The sub-model `arch` with the weights it inherits from the supernet (its slice, in the
    supernet's attention scheme) and a head drawn from `seed`, ready to fine-tune.

    Training this dense copy is the same computation as training the slice in place (the
    original): forward and gradients equal by construction, and BertAdam moves entries outside
    the slice only by weight decay, which no sub-model output reads. It runs at dense speed,
    updates only the slice's parameters, and leaves nothing to restore between archs.
    """
    init_head(supernet, seed)
    sub = extract_submodel(supernet, arch)  # set_sample_config(arch), then copy the slice
    for p in sub.parameters():
        p.requires_grad_(True)
    return sub.to(device)
