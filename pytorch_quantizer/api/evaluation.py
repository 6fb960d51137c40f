"""Top-1 / top-5 evaluation of a classifier over a data loader, optionally beside a reference model
(FP32) on the very same batches, with the fidelity figures that do not depend on labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pytorch_quantizer.errors import QuantizationError


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent, mean cross-entropy loss and the number of evaluated images."""

    top1: float
    top5: float
    loss: float
    images: int


@dataclass(frozen=True)
class Fidelity:
    """A model against a reference on the same images.

    ``top1_agreement``: percent of images whose top-1 class is the reference's;
    ``mean_kl``: mean over images of KL(p_ref || p) = sum_k p_ref,k (log p_ref,k - log p_k), in nats,
    with p = softmax(logits); ``max_abs_logit_diff`` / ``mean_abs_logit_diff``: max and mean over all
    logits of |logit - reference logit|; ``max_flipped_margin``: over the images whose top-1 class
    differs, the largest reference-logit margin between the reference's top-1 class and the model's,
    ref[argmax ref] - ref[argmax logits] (0 when all agree): how far from a tie the reference was
    wherever the classification changed.
    """

    reference: EvalResult
    top1_agreement: float
    mean_kl: float
    max_abs_logit_diff: float = 0.0
    mean_abs_logit_diff: float = 0.0
    max_flipped_margin: float = 0.0


def count_topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Images whose label is among the k largest logits (ties broken by torch.topk)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels.unsqueeze(1)).any(dim=1).sum())


class AccuracyCounter:
    """Running top-1 / top-5 counts and summed loss; totals over processes with ``sum_over_processes``."""

    def __init__(self):
        self.correct1 = self.correct5 = self.images = 0
        self.loss_sum = 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        self.correct1 += count_topk_correct(logits, labels, 1)
        self.correct5 += count_topk_correct(logits, labels, 5)
        self.images += len(labels)

    def running(self) -> dict[str, str]:
        return {"prec1": f"{100 * self.correct1 / self.images:.3f}", "prec5": f"{100 * self.correct5 / self.images:.3f}"}

    def result(self, sum_over_processes=None) -> EvalResult:
        counts = torch.tensor([self.correct1, self.correct5, self.images], dtype=torch.int64)
        loss = torch.tensor([self.loss_sum], dtype=torch.float64)
        if sum_over_processes is not None:
            counts, loss = sum_over_processes(counts), sum_over_processes(loss)
        correct1, correct5, images = (int(value) for value in counts)
        if images == 0:
            raise QuantizationError("the loader yielded no images: pass (images, labels) batches", code="no_images")
        return EvalResult(100.0 * correct1 / images, 100.0 * correct5 / images, float(loss) / images, images)


class FidelityCounter:
    """Running top-1 agreement count and summed KL(p_ref || p) of a model against a reference."""

    def __init__(self):
        self.reference = AccuracyCounter()
        self.agreeing = 0
        self.kl_sum = 0.0
        self.abs_diff_sum = 0.0
        self.abs_diff_max = 0.0
        self.flipped_margin_max = 0.0
        self.logits = 0

    def add(self, logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.reference.add(reference_logits, labels)
        top, reference_top = logits.argmax(dim=1), reference_logits.argmax(dim=1)
        self.agreeing += int((top == reference_top).sum())
        flipped = top != reference_top
        if flipped.any():
            chosen = reference_logits[flipped].double()
            margins = chosen.gather(1, reference_top[flipped, None]) - chosen.gather(1, top[flipped, None])
            self.flipped_margin_max = max(self.flipped_margin_max, float(margins.max()))
        log_p = F.log_softmax(logits.double(), dim=1)
        log_p_ref = F.log_softmax(reference_logits.double(), dim=1)
        self.kl_sum += float(F.kl_div(log_p, log_p_ref, reduction="sum", log_target=True))
        difference = (logits.double() - reference_logits.double()).abs()
        self.abs_diff_sum += float(difference.sum())
        self.abs_diff_max = max(self.abs_diff_max, float(difference.max()))
        self.logits += difference.numel()

    def result(self, sum_over_processes=None, max_over_processes=None) -> Fidelity:
        reference = self.reference.result(sum_over_processes)
        totals = torch.tensor([self.agreeing, self.kl_sum, self.abs_diff_sum, self.logits], dtype=torch.float64)
        largest = torch.tensor([self.abs_diff_max, self.flipped_margin_max], dtype=torch.float64)
        if sum_over_processes is not None:
            totals = sum_over_processes(totals)
        if max_over_processes is not None:
            largest = max_over_processes(largest)
        return Fidelity(reference, 100.0 * float(totals[0]) / reference.images, float(totals[1]) / reference.images,
                        float(largest[0]), float(totals[2]) / max(float(totals[3]), 1.0), float(largest[1]))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device | str = "cpu", print_freq: int = 0,
             progress=None, sum_over_processes=None,
             reference: torch.nn.Module | None = None, max_over_processes=None) -> tuple[EvalResult, Fidelity | None]:
    """Run ``model`` in eval mode over ``loader`` ((images, labels) batches) and accumulate top-1,
    top-5 and summed loss; with ``reference`` (e.g. the FP32 model), run it on every batch too and
    measure ``Fidelity`` against it (one pass over the data).

    ``progress(iterable, description)`` wraps the batches (e.g. a tqdm bar); every ``print_freq``
    batches the running Prec@1 / Prec@5 of this process go to its ``set_postfix``, where it has one.
    ``sum_over_processes`` (e.g. ``ProcessInfo.sum``) adds the counts of all processes before the
    percentages are taken, and ``max_over_processes`` takes the largest logit difference and
    flipped margin of all.
    """
    device = torch.device(device)
    model.eval()
    if reference is not None:
        reference.eval()
    accuracy = AccuracyCounter()
    fidelity = FidelityCounter() if reference is not None else None
    bar = progress(loader, "eval") if progress is not None else loader
    for index, (inputs, labels) in enumerate(bar):
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        reference_logits = reference(inputs) if reference is not None else None
        logits = model(inputs)
        accuracy.add(logits, labels)
        if fidelity is not None:
            fidelity.add(logits, reference_logits, labels)
        if print_freq and (index + 1) % print_freq == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(accuracy.running())
    return accuracy.result(sum_over_processes), fidelity.result(sum_over_processes, max_over_processes) if fidelity else None
