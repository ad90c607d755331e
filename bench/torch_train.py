#!/usr/bin/python3
"""PyTorch reference for bench_train: the same training job, timed the same way.

    /usr/bin/python3 bench/torch_train.py --model mlp|softmax [--data DIR]

Prints one line, e.g.
    torch model=mlp step_sps=126000 epoch_sps=110000 version=1.13.0a0

Fair to PyTorch: one thread (torch.set_num_threads(1) and the BLAS held to one
thread); the whole dataset preloaded as one float32 tensor x/255 (no DataLoader,
no per-sample Python); a step is zero_grad, forward, CrossEntropyLoss, backward,
SGD step, as petrel's is. Step timing walks consecutive batches in file order
(slices, no copy); an epoch draws torch.randperm and gathers each batch by
index, as petrel's batcher does. Each figure is the median of --repeats runs
after a warm-up.
"""
import os

# Before torch loads its BLAS: one thread, like petrel's bench.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import gzip  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def read_idx(path, magic):
    """An IDX file (optionally gzip) as (dims, bytes)."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:2] == b"\x1f\x8b":
        buf = gzip.decompress(buf)
    (m,) = struct.unpack_from(">I", buf, 0)
    if m != magic:
        sys.exit(f"{path}: magic {m:#x}, expected {magic:#x}")
    ndim = m & 0xFF
    dims = struct.unpack_from(">%dI" % ndim, buf, 4)
    return dims, buf[4 + 4 * ndim:]


def load(data_dir, split="train"):
    """Fashion-MNIST's split ("train" or "t10k") as float32 pixels / 255 and int64 labels."""
    dims, pix = read_idx(f"{data_dir}/{split}-images-idx3-ubyte.gz", 0x803)
    _, lab = read_idx(f"{data_dir}/{split}-labels-idx1-ubyte.gz", 0x801)
    n = dims[0]
    x = torch.frombuffer(bytearray(pix), dtype=torch.uint8).reshape(n, dims[1] * dims[2])
    x = x.to(torch.float32) / 255.0
    y = torch.frombuffer(bytearray(lab), dtype=torch.uint8).to(torch.int64)
    return x.contiguous(), y


def main():
    ap = argparse.ArgumentParser(description="PyTorch reference for bench_train")
    ap.add_argument("--model", choices=("mlp", "softmax"), required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed step run")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (median)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(1)
    x, y = load(args.data)
    n, d = x.shape
    classes = int(y.max()) + 1
    if args.model == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(d, args.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(args.hidden, classes))
    else:
        model = torch.nn.Linear(d, classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    B = args.batch
    full = n // B  # full batches in file order

    def run_steps(count, start):
        for i in range(start, start + count):
            j = (i % full) * B
            step(x[j:j + B], y[j:j + B])
        return start + count

    at = run_steps(args.warmup, 0)
    step_sps = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        at = run_steps(args.steps, at)
        step_sps.append(args.steps * B / (time.perf_counter() - t0))

    epoch_sps = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for j in range(0, n, B):
            idx = perm[j:j + B]
            step(x[idx], y[idx])
        epoch_sps.append(n / (time.perf_counter() - t0))

    print("torch model=%s step_sps=%.0f epoch_sps=%.0f version=%s" %
          (args.model, statistics.median(step_sps), statistics.median(epoch_sps),
           torch.__version__), flush=True)


if __name__ == "__main__":
    main()
