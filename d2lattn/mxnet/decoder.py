"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""
