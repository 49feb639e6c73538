"""Hugging Face GPT-2 folders, both ways: ``gpt-import hf`` (``load``, ``cli``) reads one into our
checkpoint; ``gpt-export hf`` (``save``) writes one from it. The weight-name map and config
translation live in ``load`` and serve both."""
