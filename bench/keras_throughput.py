"""Training speed of the same networks in plain PyTorch, Keras on torch and Keras on TensorFlow; and, with
`--accuracy`, the test accuracy of the MNIST CNN trained by the image_classification report in each of them.

Throughput: each framework runs in its own process (Keras's backend is fixed once Keras is imported). It trains the
default CNN (widths 32, 64, batch norm) on real MNIST images, and the default text LSTM on real SST-2 sentences,
with AdamW at batch size `--bs`: `--warmup` steps first (Keras traces its train step, oneDNN picks its kernels),
then `--steps` timed steps of training only. PyTorch is a minimal hand-written loop over the aiprod models
(baseline, 1.00x); Keras is `model.fit()` over NumPy arrays, as `aiprod.keras_models.KerasLearner` calls it.
The table shows the best of `--repeats` timings, in samples per second.

Accuracy: `aiprod run image_classification -p dataset mnist` with each framework in turn (each run is its own
kernel), the same parameters otherwise; the table reads each run's metrics.json. Goal: Keras within 1 point of torch.

    .venv/bin/python bench/keras_throughput.py [--steps 60] [--warmup 10] [--bs 128] [--repeats 3]
    .venv/bin/python bench/keras_throughput.py --accuracy [--epochs 3]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

FRAMEWORKS = {"torch": "plain PyTorch loop (baseline)", "keras-torch": "Keras 3 fit(), torch backend",
              "keras-tensorflow": "Keras 3 fit(), TensorFlow backend"}

REPORT_PATHS = {"torch": "framework torch (aiprod Learner)", "keras-torch": "framework keras, backend torch",
                "keras-tensorflow": "framework keras, backend tensorflow"}


def mnist_arrays(n: int):
    "The first `n` MNIST training images, normalised, (n, 1, 28, 28) float32, and their labels."
    from aiprod import data, datasets
    train = data.normalize_images(data.split_data(datasets.load_dataset("mnist", progress=False), seed=0))["train"]
    return train.x[:n], train.y[:n]


def sst2_arrays(n: int):
    "The first `n` SST-2 training sentences as padded word ids, (n, seq_len) int64, their labels, and the vocabulary size."
    from aiprod import data, datasets, text
    splits = data.split_data(datasets.load_dataset("sst2", progress=False), seed=0)
    vocab = text.Vocab.build(splits["train"].x)
    seq_len = text.choose_seq_len(vocab.lengths(splits["train"].x))
    train = text.encode_splits({"train": splits["train"]}, vocab, seq_len)["train"]
    return train.x[:n], train.y[:n], len(vocab)


def torch_speed(name: str, config: dict, x, y, bs: int, warmup: int, steps: int, repeats: int) -> float:
    "Samples/s of a minimal PyTorch training loop over the aiprod model `name`."
    import torch, torch.nn.functional as F
    from aiprod.models import build_model
    torch.manual_seed(0)
    model = build_model(name, **config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    def train(n_steps):
        for step in range(n_steps):
            start = step * bs % (len(xs) - bs + 1)
            loss = F.cross_entropy(model(xs[start:start + bs]), ys[start:start + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()  # waits for the last step
    train(warmup)
    return max(steps * bs / timed(lambda: train(steps)) for _ in range(repeats))


def keras_speed(name: str, config: dict, x, y, bs: int, warmup: int, steps: int, repeats: int) -> float:
    "Samples/s of Keras's `fit()` on the Keras version of the aiprod model `name`."
    from aiprod import keras_models
    keras = keras_models.import_keras()
    keras.utils.set_random_seed(0)
    model = keras_models.build_model(name, **config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inputs = keras_models.keras_inputs(x)
    def train(n_steps):
        with keras_models.native_stderr_silenced():
            model.fit(inputs[:n_steps * bs], y[:n_steps * bs], batch_size=bs, epochs=1, shuffle=False, verbose=0)
    train(warmup)
    return max(steps * bs / timed(lambda: train(steps)) for _ in range(repeats))


def timed(step) -> float:
    "Seconds one call of `step` takes."
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def worker(framework: str, bs: int, warmup: int, steps: int, repeats: int):
    "Measure both models in this process, with `framework`; print the result as JSON."
    speed = torch_speed if framework == "torch" else keras_speed
    if framework != "torch":
        from aiprod import keras_models
        keras_models.use_backend(framework.split("-", 1)[1])
    n = (warmup + steps) * bs
    images, labels = mnist_arrays(n)
    ids, text_labels, vocab_size = sst2_arrays(n)
    print(json.dumps({"cnn": speed("cnn", {}, images, labels, bs, warmup, steps, repeats),
                      "lstm": speed("lstm", {"vocab_size": vocab_size}, ids, text_labels, bs, warmup, steps, repeats),
                      "seq_len": ids.shape[1]}))


def run_worker(framework: str, args) -> dict:
    "Run `worker` for `framework` in a fresh Python process and read its result."
    done = subprocess.run([sys.executable, __file__, "--worker", framework, "--bs", str(args.bs), "--warmup",
                           str(args.warmup), "--steps", str(args.steps), "--repeats", str(args.repeats)],
                          capture_output=True, text=True)
    if done.returncode: sys.exit(f"{framework} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def throughput(args):
    import torch
    results = {framework: run_worker(framework, args) for framework in FRAMEWORKS}
    print(f"samples/s, training only: bs {args.bs}, {args.steps} timed steps after {args.warmup} warm-up steps, best of "
          f"{args.repeats}, {torch.get_num_threads()} threads; CNN on MNIST 28x28 (widths 32, 64), text LSTM on SST-2 "
          f"ids padded to {results['torch']['seq_len']} (embedding 128, 128 units each way)\n")
    print("| framework | CNN samples/s | vs torch | LSTM samples/s | vs torch |\n|---|---:|---:|---:|---:|")
    base = results["torch"]
    for framework, label in FRAMEWORKS.items():
        r = results[framework]
        print(f"| {label} | {r['cnn']:,.0f} | {r['cnn'] / base['cnn']:.2f}x | {r['lstm']:,.0f} | {r['lstm'] / base['lstm']:.2f}x |")


def accuracy(args):
    "Train the MNIST CNN through the image_classification report in each framework; print a table."
    bin_dir, rows = Path(sys.executable).parent, {}
    common = ["-p", "dataset", "mnist", "-p", "epochs", str(args.epochs), "-p", "bs", "128", "-p", "lr", "0.005"]
    with tempfile.TemporaryDirectory() as workdir:
        for framework in FRAMEWORKS:
            choice = ["-p", "framework", "keras", "-p", "backend", framework.split("-", 1)[1]] if "-" in framework else []
            start = time.perf_counter()
            done = subprocess.run([bin_dir / "aiprod", "run", "image_classification", "--quiet", *common, *choice],
                                  cwd=workdir, capture_output=True, text=True)
            if done.returncode: sys.exit(f"{framework} run failed:\n{done.stderr[-3000:]}")
            run_dir = max((Path(workdir) / "reports").glob("*-image_classification-*"), key=os.path.getmtime)
            record = json.loads((run_dir / "metrics.json").read_text())
            last_epoch = (run_dir / "history.csv").read_text().splitlines()[-1]
            rows[framework] = {**record["metrics"], "seconds": record["training"]["seconds"],
                               "wall": time.perf_counter() - start, "last_speed": float(last_epoch.split(",")[-1])}
    print(f"image_classification on full MNIST (60,000 training images less 15% for validation, official 10,000 "
          f"test images): epochs {args.epochs}, bs 128, lr 0.005, seed 0; the best epoch's weights are scored\n")
    print("| framework | test accuracy | vs torch (points) | best epoch | training s | samples/s (last epoch) | run wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = rows["torch"]["test_accuracy"]
    for framework, label in FRAMEWORKS.items():
        r = rows[framework]
        print(f"| {REPORT_PATHS[framework]} | {r['test_accuracy']:.2%} | "
              f"{100 * (r['test_accuracy'] - base):+.2f} | {r['best_epoch']} | {r['seconds']:.0f} | "
              f"{r['last_speed']:,.0f} | {r['wall']:.0f} |")
    worst = max(abs(rows[f]["test_accuracy"] - base) for f in FRAMEWORKS)
    print(f"\ngoal: Keras within 1 point of torch: {'met' if worst <= 0.01 else 'MISSED'} (largest gap {100 * worst:.2f} points)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--bs", type=int, default=128, help="batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timings per model; the best is shown")
    parser.add_argument("--accuracy", action="store_true", help="instead, train on full MNIST in each framework")
    parser.add_argument("--epochs", type=int, default=3, help="with --accuracy: epochs of each run")
    parser.add_argument("--worker", choices=list(FRAMEWORKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker: worker(args.worker, args.bs, args.warmup, args.steps, args.repeats)
    elif args.accuracy: accuracy(args)
    else: throughput(args)
