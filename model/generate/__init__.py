"""Decoding: the protocol every view talks to (``backend``), the one decode loop (``engine``) and its
sampler (``sampling``), many prompts sharing a forward pass (``batched``), the PyTorch decoders
(``torch_backend``), and what the views compute from a model (``insight``, ``compare``)."""
