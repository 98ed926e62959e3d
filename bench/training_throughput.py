"""The Learner's training throughput against a minimal hand-written PyTorch loop, same model, data and optimizer.

Both train the default CNN on the same MNIST images for the same number of epochs, validating after each, alternating
in one process; the table shows training samples/s (training + validation time) of the best of `--repeats` runs and
their ratio (goal: Learner >= 0.95x the plain loop).

    .venv/bin/python bench/training_throughput.py [--examples 6000] [--epochs 2] [--repeats 3]
"""
import argparse, time

import torch
import torch.nn.functional as F

from aiprod import data, datasets
from aiprod.core import seed_everything
from aiprod.models import build_model
from aiprod.training import Learner


def nchw_cnn():
    "The default CNN kept in PyTorch's default (batch, channels, height, width) layout instead of channels-last."
    model = build_model("cnn").to(memory_format=torch.contiguous_format)
    model.forward = lambda x: model.head(model.features(x))
    return model


def plain_loop(train, valid, epochs, bs, lr, make_model=lambda: build_model("cnn")):
    "The loop a researcher writes by hand: shuffle, forward, loss, backward, step, schedule; validate each epoch."
    seed_everything(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    loader, valid_loader = data.batches(train, bs=bs, shuffle=True), data.batches(valid, bs=512)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
        model.eval()
        with torch.no_grad(): sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in valid_loader)  # as Learner.validate
    return epochs * len(train) / (time.perf_counter() - start)


def learner_loop(train, valid, epochs, bs, lr):
    "The same work through aiprod's Learner: training and a validation pass per epoch."
    seed_everything(0)
    learn = Learner(build_model("cnn"), data.batches(train, bs=bs, shuffle=True), data.batches(valid, bs=512), lr=lr,
                    progress=False, device=torch.device("cpu"))
    start = time.perf_counter()
    learn.fit(epochs)
    return epochs * len(train) / (time.perf_counter() - start)


def main(examples, epochs, repeats, bs=128, lr=3e-3):
    mnist = datasets.load_dataset("mnist", progress=False)
    splits = data.limit_splits(data.split_data(mnist, seed=0), examples, seed=0)
    train, valid = splits["train"], splits["valid"]
    plain, ours, nchw = [], [], []
    for _ in range(repeats):
        plain.append(plain_loop(train, valid, epochs, bs, lr))
        ours.append(learner_loop(train, valid, epochs, bs, lr))
        nchw.append(plain_loop(train, valid, epochs, bs, lr, nchw_cnn))
    best_plain, best_ours, best_nchw = max(plain), max(ours), max(nchw)
    print(f"default CNN on {len(train):,} MNIST images, {epochs} epochs, bs {bs}, best of {repeats}, "
          f"{torch.get_num_threads()} threads\n")
    print("| loop | samples/s | vs plain |\n|---|---:|---:|")
    print(f"| minimal hand-written PyTorch loop (baseline) | {best_plain:,.0f} | 1.00x |")
    print(f"| aiprod Learner (callbacks, history, progress off) | {best_ours:,.0f} | {best_ours / best_plain:.2f}x |")
    print(f"| the plain loop with the CNN in the default NCHW layout, not channels-last | {best_nchw:,.0f} | "
          f"{best_nchw / best_plain:.2f}x |")
    print(f"\ngoal >= 0.95x: {'met' if best_ours / best_plain >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.examples, args.epochs, args.repeats)
