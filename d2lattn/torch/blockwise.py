"""Attention that fits in memory: blockwise (online-softmax) attention with a recomputing backward, and the merge of partial results."""
