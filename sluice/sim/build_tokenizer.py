"""Builds ``tokenizer.json``, the tokenizer the sim ships and counts with: ``python -m sluice.sim.build_tokenizer``.

A word-level tokenizer, trained with Hugging Face ``tokenizers`` on the sim's own words (what it
generates, the chat roles, punctuation and digits): a run of word characters or a single other
symbol is one token, whitespace is none, and a word it never saw is one ``[UNK]`` token. So the
count is the sim's documented one, and any gateway that loads the same file counts the same.
Run it again only to change the vocabulary; the output is deterministic.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from .text import _WORDS

PATH = Path(__file__).with_name("tokenizer.json")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
UNK = "[UNK]"


def build() -> Tokenizer:
    """The tokenizer, trained on the sim's vocabulary."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    # keep each word and each single symbol, drop the whitespace between them
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="removed", invert=True)
    corpus = [" ".join(w.strip() for w in _WORDS), " ".join(ROLES), " ".join(string.punctuation), " ".join(string.digits)]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=[UNK], min_frequency=1, show_progress=False))
    return tok


def main() -> None:
    build().save(str(PATH), pretty=False)
    print(f"wrote {PATH} ({PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
