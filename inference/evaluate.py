"""Top-1 / top-5 evaluation of a classifier over a data loader."""
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent, mean cross-entropy loss and the number of evaluated images."""

    top1: float
    top5: float
    loss: float
    images: int


def count_topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Images whose label is among the k largest logits (ties broken by torch.topk)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels.unsqueeze(1)).any(dim=1).sum())


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device, print_freq: int = 0,
             progress: bool = False, sum_over_processes=None) -> EvalResult:
    """Run ``model`` in eval mode over ``loader`` and accumulate top-1, top-5 and summed loss.

    With ``progress`` a tqdm bar is drawn over batches and, every ``print_freq`` batches, its
    postfix shows the running Prec@1 / Prec@5 of this process. ``sum_over_processes`` (e.g.
    ``ProcessInfo.sum``) adds the counts of all processes before the percentages are taken.
    """
    model.eval()
    correct1 = correct5 = images = 0
    loss_sum = 0.0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False)
    for index, (inputs, labels) in enumerate(bar):
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(inputs)
        loss_sum += float(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        correct1 += count_topk_correct(logits, labels, 1)
        correct5 += count_topk_correct(logits, labels, 5)
        images += len(labels)
        if print_freq and (index + 1) % print_freq == 0:
            bar.set_postfix(prec1=f"{100 * correct1 / images:.3f}", prec5=f"{100 * correct5 / images:.3f}")
    if sum_over_processes is not None:
        totals = sum_over_processes(torch.tensor([correct1, correct5, images], dtype=torch.int64))
        correct1, correct5, images = (int(value) for value in totals)
        loss_sum = float(sum_over_processes(torch.tensor([loss_sum], dtype=torch.float64)))
    if images == 0:
        raise ValueError("the loader yielded no images")
    return EvalResult(100.0 * correct1 / images, 100.0 * correct5 / images, loss_sum / images, images)
