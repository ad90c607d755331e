#!/usr/bin/python3
"""PyTorch DistributedDataParallel reference for `petrel bench dp`: the same job.

    /usr/bin/python3 bench/ddp_train.py [--workers 2] [--batch 32] [--epochs 1] [--data DIR]

Prints one line (from rank 0), e.g.
    ddp workers=2 batch=32 epochs=1 samples_per_sec=21300 test_accuracy=0.8050 \
        train_loss=0.5700 epoch_s=2.82 version=1.13.0a0

The job is petrel train --workers 2 --batch 32's: an MLP 784-256-10 (ReLU) on
Fashion-MNIST, softmax cross-entropy (mean), SGD lr 0.1, batch 32 per worker, each
worker on its own half of a fresh permutation every epoch, the gradients averaged
across workers before every step (DDP with the gloo backend, its default buckets).

Fair to PyTorch, as bench/torch_train.py is: every worker holds one thread
(torch.set_num_threads(1), OMP/OpenBLAS/MKL held to one thread before torch loads);
the whole dataset is preloaded as one float32 tensor x/255 and each batch gathered by
index (no DataLoader, no per-sample Python); the workers are two processes
(torch.multiprocessing.spawn) meeting at 127.0.0.1 on a free port. samples_per_sec is
the samples of all workers over the training steps of the last epoch, timed from a
barrier before its first step to a barrier after its last; the test set is evaluated
after it (on rank 0, not timed), as petrel's is.
"""
import os

# Before torch loads its BLAS: one thread per worker, like petrel's.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import load  # noqa: E402  the same data loading as bench_train's reference


def worker(rank, args, port):
    # Dies with the launcher, whatever kills it (PR_SET_PDEATHSIG = 1).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)

    x, y = load(args.data, "train")
    tx, ty = load(args.data, "t10k")
    n, d = x.shape
    classes = int(y.max()) + 1
    torch.manual_seed(args.seed)
    net = torch.nn.Sequential(torch.nn.Linear(d, args.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(args.hidden, classes))
    model = DDP(net)  # broadcasts rank 0's parameters
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    W, B = args.workers, args.batch
    per = n // W  # every worker the same number of samples, so the same number of steps

    sps = epoch_s = train_loss = 0.0
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        mine = torch.randperm(n, generator=g)[rank::W][:per]
        loss_sum = 0.0
        dist.barrier()
        t0 = time.perf_counter()
        for j in range(0, per, B):
            idx = mine[j:j + B]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
        dist.barrier()
        epoch_s = time.perf_counter() - t0
        sps = W * per / epoch_s
        train_loss = loss_sum / per

    if rank == 0:
        net.eval()
        correct = 0
        with torch.no_grad():
            for j in range(0, tx.shape[0], 1000):
                correct += int((net(tx[j:j + 1000]).argmax(1) == ty[j:j + 1000]).sum())
        print("ddp workers=%d batch=%d epochs=%d samples_per_sec=%.0f test_accuracy=%.4f "
              "train_loss=%.4f epoch_s=%.3f version=%s" %
              (W, B, args.epochs, sps, correct / tx.shape[0], train_loss, epoch_s,
               torch.__version__), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description="PyTorch DDP reference for petrel bench dp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="samples per worker and step")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    mp.spawn(worker, args=(args, free_port()), nprocs=args.workers, join=True)


if __name__ == "__main__":
    main()
