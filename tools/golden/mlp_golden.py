#!/usr/bin/python3
"""Golden losses for petrel's MLP: the first 10 SGD steps, computed by PyTorch.

Reads a petrel checkpoint of the untrained MLP (784-256-10, ReLU), loads it into
a torch.nn MLP, and runs 10 SGD steps (lr 0.1, batch 64, mean cross-entropy) on
the first 640 Fashion-MNIST training samples in file order (no shuffle), pixels
x / 255 as float32. Writes the loss of each step, taken before its update, with a
comment header saying how the file was made. tests/train/test_golden.c replays
the same steps in petrel and compares.

    build/petrel train --model mlp --epochs 0 --seed 1 --out /tmp/mlp0
    /usr/bin/python3 tools/golden/mlp_golden.py --ckpt /tmp/mlp0/model.ckpt \\
        --out tests/golden/mlp_first10.txt

The checkpoint format is the table at the top of src/nn/checkpoint.c.
"""
import argparse
import gzip
import struct
import sys
import zlib

import numpy as np
import torch

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
STEPS, BATCH, LR = 10, 64, 0.1


def read_checkpoint(path):
    """Returns (meta, {name: float32 ndarray}) from a petrel checkpoint (format v1)."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 24 or buf[:8] != b"PETRELCK":
        sys.exit(f"{path}: not a petrel checkpoint (magic)")
    (crc,) = struct.unpack_from("<I", buf, len(buf) - 4)
    if zlib.crc32(buf[:-4]) & 0xFFFFFFFF != crc:
        sys.exit(f"{path}: CRC mismatch (corrupt or truncated)")
    version, count, meta_len = struct.unpack_from("<III", buf, 8)
    if version != 1:
        sys.exit(f"{path}: format version {version}, this script reads 1")
    off = 20
    meta = buf[off:off + meta_len].decode()
    off += meta_len
    records = []
    for _ in range(count):
        (nlen,) = struct.unpack_from("<H", buf, off)
        name = buf[off + 2:off + 2 + nlen].decode()
        off += 2 + nlen
        ndim = buf[off]
        shape = struct.unpack_from("<%dQ" % ndim, buf, off + 1)
        off += 1 + 8 * ndim
        records.append((name, shape))
    params = {}
    for name, shape in records:
        n = int(np.prod(shape))
        params[name] = np.frombuffer(buf, dtype="<f4", count=n, offset=off).reshape(shape).copy()
        off += 4 * n
    if off != len(buf) - 4:
        sys.exit(f"{path}: {len(buf) - 4 - off} unexpected bytes before the CRC")
    return meta, params


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        buf = f.read()
    (m,) = struct.unpack_from(">I", buf, 0)
    if m != magic:
        sys.exit(f"{path}: magic {m:#x}, expected {magic:#x}")
    ndim = m & 0xFF
    dims = struct.unpack_from(">%dI" % ndim, buf, 4)
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint of the untrained MLP")
    ap.add_argument("--data", default=DEFAULT_DATA, help="Fashion-MNIST directory [%(default)s]")
    ap.add_argument("--seed", type=int, default=1, help="seed the checkpoint was made with (recorded only)")
    ap.add_argument("--out", default="-", help="output file, - for stdout [%(default)s]")
    args = ap.parse_args()

    torch.set_num_threads(1)
    meta, p = read_checkpoint(args.ckpt)
    want = {"fc1.weight": (256, 784), "fc1.bias": (256,), "fc2.weight": (10, 256), "fc2.bias": (10,)}
    got = {k: tuple(v.shape) for k, v in p.items()}
    if got != want:
        sys.exit(f"{args.ckpt}: parameters {got}, expected {want}")

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(p["fc1.weight"]))
        model[0].bias.copy_(torch.from_numpy(p["fc1.bias"]))
        model[2].weight.copy_(torch.from_numpy(p["fc2.weight"]))
        model[2].bias.copy_(torch.from_numpy(p["fc2.bias"]))

    n = STEPS * BATCH
    images = read_idx(f"{args.data}/train-images-idx3-ubyte.gz", 0x803)[:n]
    labels = read_idx(f"{args.data}/train-labels-idx1-ubyte.gz", 0x801)[:n]
    # Same rounding as petrel's IDX reader: (float)v / 255.0f.
    x = torch.from_numpy(images.reshape(n, 784).astype(np.float32) / np.float32(255))
    y = torch.from_numpy(labels.astype(np.int64))

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for i in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(model(x[i * BATCH:(i + 1) * BATCH]), y[i * BATCH:(i + 1) * BATCH])
        losses.append(loss.item())
        loss.backward()
        opt.step()

    lines = [
        "# petrel golden losses: MLP 784-256-10 ReLU, SGD lr 0.1, batch 64, mean cross-entropy,",
        "# Fashion-MNIST train samples [64i, 64i+64) in file order, x/255 float32, 10 steps;",
        "# the loss of each step before its update. Made by PyTorch %s (1 thread) with" % torch.__version__,
        "#   build/petrel train --model mlp --epochs 0 --seed %d --out DIR" % args.seed,
        "#   /usr/bin/python3 tools/golden/mlp_golden.py --ckpt DIR/model.ckpt --out FILE",
        "# checkpoint metadata: %s" % meta,
    ] + ["%.9g" % v for v in losses]
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
