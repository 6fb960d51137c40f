"""Train the Fashion-MNIST reference models whose checkpoints ship in inference/checkpoints/.

Fixed recipe, chosen before looking at the test set and never tuned on it: SGD (Nesterov momentum
0.9, weight decay 5e-4), one-cycle learning rate with peak 0.1, batch 128, cross entropy, on all
60,000 training images with random shifts of up to 2 pixels and horizontal flips. The 10,000 test
images are evaluated once, after training, and only reported.

    python analysis/train_fmnist.py --arch fmnist_resnet20 --epochs 12
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=["fmnist_resnet20", "fmnist_mobilenet"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--data", type=Path, default=None, help="Fashion-MNIST idx folder (default: the Debian package's)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint path (default: inference/checkpoints/ARCH.pt)")
    return parser.parse_args(argv)


def augment(images, generator):
    """Random shifts of up to 2 pixels (zero padding) and horizontal flips of a uint8 batch (N, 28, 28)."""
    import torch

    count, height, width = images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = torch.randint(0, 5, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    out = torch.empty_like(images)
    for index in range(count):
        top, left = int(shifts[index, 0]), int(shifts[index, 1])
        crop = padded[index, top : top + height, left : left + width]
        out[index] = crop.flip(-1) if flips[index] else crop
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from inference import fashion_mnist
    from pytorch_quantizer.api.evaluation import evaluate
    from inference.models import build_architecture
    from pytorch_quantizer.formats.safe_io import write_atomically

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folder = args.data or fashion_mnist.DEFAULT_DIR
    train_images, train_labels = fashion_mnist.load_split(folder, "train")
    test_set = fashion_mnist.InMemoryImages(*fashion_mnist.load_split(folder, "test"))

    model = build_architecture(args.arch).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(train_labels) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_labels), generator=generator)
        correct = seen = 0
        progress = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=5)
        for step in progress:
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            pixels = augment(train_images[batch], generator).float().div_(255.0)
            inputs = ((pixels - fashion_mnist.MEAN) / fashion_mnist.STD).unsqueeze(1)
            inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
            labels = train_labels[batch].to(device)
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            progress.set_postfix(loss=f"{loss.item():.3f}", train_acc=f"{100 * correct / seen:.2f}", refresh=False)

    model.eval()
    loader = torch.utils.data.DataLoader(
        test_set, sampler=torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(test_set), 500, False), batch_size=None
    )
    result, _ = evaluate(model, loader, device)
    out = args.out or REPO_ROOT / "inference" / "checkpoints" / f"{args.arch}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_atomically(out, lambda temporary: torch.save(state, temporary))
    summary = {"arch": args.arch, "epochs": args.epochs, "seed": args.seed, "test_top1": result.top1,
               "test_top5": result.top5, "train_seconds": round(time.time() - start, 1), "checkpoint": str(out)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
