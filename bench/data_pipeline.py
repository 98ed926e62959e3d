"""Data pipeline speed: loading, tokenising, featurising, and whether batches keep a training loop fed.

Each row times aiprod's step and, where one exists, a plain baseline doing the same work in the same process.
Real data comes through aiprod's registry: from the folders in AIPROD_DATA_DIR when it is set, else from the cache
(downloaded once, checked by sha256).

    .venv/bin/python bench/data_pipeline.py
"""
import os, time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from aiprod import audio, data, datasets, download, text
from aiprod.models import build_model


def timed(step, repeats=3):
    "Best wall time of `repeats` calls, and the last result."
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    return best, result


def samples_per_second(loader, limit):
    "Items per second served by iterating `loader` until `limit` items."
    start, seen = time.perf_counter(), 0
    for xb, yb in loader:
        seen += len(yb)
        if seen >= limit: break
    return seen / (time.perf_counter() - start)


def model_rate(train, bs=128, steps=40):
    "Training samples per second of the default CNN on one batch of `train`, the loader taken out."
    model = build_model("cnn")
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    xb, yb = torch.from_numpy(train.x[:bs]), torch.from_numpy(train.y[:bs])
    def step():
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
    step()
    start = time.perf_counter()
    for _ in range(steps): step()
    return bs * steps / (time.perf_counter() - start)


def main():
    rows = []
    path = download.fetch(datasets.MNIST)  # the same verified file load_dataset("mnist") reads
    plain, _ = timed(lambda: {k: v.astype(np.float32) / 255 for k, v in np.load(path).items() if k.startswith("x")})
    ours, mnist = timed(lambda: datasets.load_dataset("mnist", progress=False))
    rows += [("MNIST from the local npz (goal <= 1 s)", ours, "np.load + scale", plain)]

    sst2 = data.map_splits(datasets.load_dataset("sst2", progress=False), text.clean_texts)
    train_texts = sst2["train"].x
    plain, _ = timed(lambda: [t.lower().split() for t in train_texts])
    def vocab_encode():
        vocab = text.Vocab.build(train_texts)
        return text.encode_splits({"train": sst2["train"]}, vocab, 32)
    ours, _ = timed(vocab_encode)
    rows += [(f"SST-2 train ({len(train_texts):,}): vocabulary + ids (goal <= 10 s)", ours, "str.split", plain)]
    tokenizer = text.bert_tokenizer()
    ours, _ = timed(lambda: text.bert_encode(tokenizer, train_texts, 128), repeats=1)
    rows += [("SST-2 train: BERT WordPiece ids (goal <= 30 s)", ours, "", None)]

    fsdd = datasets.load_dataset("fsdd", progress=False)
    ours, _ = timed(lambda: audio.audio_features(fsdd["train"]), repeats=1)
    rows += [(f"FSDD train ({len(fsdd['train']):,} recordings): log-mel frames", ours, "", None)]

    train = mnist["train"]
    limit = 30_000
    loader = samples_per_second(data.batches(train, bs=128, shuffle=True), limit)
    torch_default = samples_per_second(DataLoader(TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y)),
                                                  batch_size=128, shuffle=True), limit)
    steps = model_rate(train)

    print(f"data pipeline, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| step | aiprod (s) | baseline | baseline (s) | aiprod / baseline |\n|---|---:|---|---:|---:|")
    for name, ours, base_name, base in rows:
        ratio = f"{ours / base:.2f}x" if base else ""
        print(f"| {name} | {ours:.3f} | {base_name} | {'' if base is None else f'{base:.3f}'} | {ratio} |")
    print("\n| MNIST batches of 128 | samples/s | vs CNN training step |\n|---|---:|---:|")
    for name, rate in (("aiprod `data.batches` (whole-batch indexing)", loader),
                       ("torch DataLoader(TensorDataset), default collation", torch_default),
                       ("the default CNN's training step (forward + backward + AdamW)", steps)):
        print(f"| {name} | {rate:,.0f} | {rate / steps:.1f}x |")
    print(f"\nthe loader {'keeps' if loader > steps else 'does NOT keep'} the CNN fed ({loader / steps:.0f}x its step rate)")


if __name__ == "__main__":
    main()
