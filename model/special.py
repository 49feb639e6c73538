"""What every tokenizer shares: the end-of-text marker and the policy for characters it cannot read.

Its own module so that the tokenizers (model.tokenizer, model.bpe) can all import it without
importing each other."""

from typing import Literal

EOT = "<|endoftext|>"
Unknown = Literal["reject", "replace"]  # prompt characters outside the vocabulary
