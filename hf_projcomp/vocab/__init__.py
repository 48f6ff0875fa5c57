"""Vocabulary pruning for BPE tokenizers: keep a subset of tokens, renumber densely, stay loadable.

>>> new_tok, kept_old_ids = prune_tokenizer(tokenizer, frequent_ids)
>>> small_embedding = embedding.weight[kept_old_ids]
"""

from .agreement import segmentation_agreement
from .prune import VocabularyPruner, prune_tokenizer, required_token_ids
from .tokenizer_json import VocabularyPruningError

__all__ = [
    "VocabularyPruner",
    "VocabularyPruningError",
    "prune_tokenizer",
    "required_token_ids",
    "segmentation_agreement",
]
