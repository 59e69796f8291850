"""PyTorch training on a CPU that other programs share: `python -m benchmarks.shared_cpu`.

Chapter 3's model (a GRU encoder-decoder with additive attention, embeddings 16, hidden 32) on
its data, trained for EPOCHS epochs by `train_seq2seq`, first alone, then beside as many busy
processes as there are cores (a learner's laptop with a browser open); with the thread count the
trainer picks for a small model (one) and with PyTorch's own (ONE_THREAD_BELOW set to 0). The
ratio loaded / alone is what sharing the CPU costs; on a machine that is busy already both runs
are loaded, so the ratio says less than the seconds do.
"""

import multiprocessing
import os
import time

import numpy as np
import torch

from d2lattn import torch as d2l
from d2lattn.data import Seq2SeqData, date_pairs
from d2lattn.torch import ops

EPOCHS = 2


def busy(stop):
    while not stop.is_set():
        pass


def training_seconds(data, vocab_sizes):
    model = d2l.Seq2Seq(*vocab_sizes, 16, 32)
    rng = np.random.default_rng(0)
    d2l.set_params(model, {n: rng.uniform(-0.2, 0.2, p.shape) for n, p in sorted(d2l.get_params(model).items())})
    start = time.perf_counter()
    d2l.train_seq2seq(model, data.train, epochs=EPOCHS, lr=0.01, progress=False)
    return time.perf_counter() - start


def main():
    data = Seq2SeqData(date_pairs(2500, seed=0), num_steps=(22, 11), batch_size=128, level="char", num_val=500)
    sizes = (len(data.src_vocab), len(data.tgt_vocab))
    print(f"\ntrain_seq2seq, chapter 3's model, {EPOCHS} epochs; {os.cpu_count()} cores, "
          f"PyTorch's own thread count {torch.get_num_threads()}")
    print(f"{'threads':<34} {'alone s':>8} {'loaded s':>9} {'loaded/alone':>13}")
    default = ops.ONE_THREAD_BELOW
    for label, threshold in (("the trainer's (1 for a small model)", default), ("PyTorch's own", 0)):
        ops.ONE_THREAD_BELOW = threshold
        try:
            training_seconds(data, sizes)                                 # warm up
            alone = training_seconds(data, sizes)
            stop = multiprocessing.Event()
            load = [multiprocessing.Process(target=busy, args=(stop,)) for _ in range(os.cpu_count())]
            for p in load:
                p.start()
            try:
                loaded = training_seconds(data, sizes)
            finally:
                stop.set()
                for p in load:
                    p.join()
        finally:
            ops.ONE_THREAD_BELOW = default
        print(f"{label:<34} {alone:>8.2f} {loaded:>9.2f} {loaded / alone:>13.2f}")


if __name__ == "__main__":
    main()
