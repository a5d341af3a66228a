"""The text tokenizer: byte-level BPE (HF `tokenizers`) trained on the world's language.

Digits are always single tokens (poses and counts are numbers the model must spell out digit by
digit); any byte string can be encoded (byte-level alphabet, no unknown token); special tokens
mark segment boundaries, task tags and contexts. The tokenizer shipped with the package
(`omni/tokens/tokenizer.json`) is rebuilt, byte for byte, by `omni tokens build-text`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_PATH = Path(__file__).with_name("tokenizer.json")
VOCAB_SIZE = 640
CORPUS_SEEDS = (0, 500)  # train-split seeds whose texts (every task) train the tokenizer
# the commit whose world wrote the shipped tokenizer.json's corpus: the world's texts changed after it
# (the spatial thought names its option, commit 014eb30) and every checkpoint's embeddings index this
# tokenizer, so it is kept; `omni tokens build-text` run on that commit's omni/ rebuilds it byte for byte
SHIPPED_CORPUS_COMMIT = "625c79e1891ae5a68f26affc473d19d5808540e4"

# Special tokens: structure, tasks, contexts. Their ids are the first ones, in this order.
SPECIAL_TOKENS = [
    "<pad>", "<bos>", "<eos>",
    # segments
    "<img>", "</img>", "<gen>", "</gen>", "<vis>", "</vis>",
    # tasks
    "<vqa>", "<t2i>", "<spatial>", "<depth>", "<pose>", "<nvs>", "<video>", "<edit>",
    # contexts and fields
    "<think>", "</think>", "<campose>", "</campose>", "<layout>", "</layout>", "<caption>", "</caption>",
    "<depthcap>", "</depthcap>", "<question>", "</question>", "<answer>", "</answer>",
    "<instruction>", "</instruction>", "<view>", "</view>",
    "<look_up>", "<look_down>", "<look_left>", "<look_right>",
]


def world_corpus(seeds: tuple[int, int] = CORPUS_SEEDS) -> list[str]:
    """Every text of every task for train-split seeds [lo, hi), in a fixed order."""
    from omni.world import TASKS, sample

    out = []
    for task in TASKS:
        for ex in sample(task, range(*seeds)):
            out += [ex.texts[k] for k in sorted(ex.texts)]
    return out


def train_tokenizer(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


class TextTokenizer:
    """Encode / decode text; special tokens by name (`tok.id("<think>")`)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tk = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        for i, name in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(name) != i:
                raise ValueError(f"tokenizer: special token {name!r} must have id {i}")
        self.pad, self.bos, self.eos = 0, 1, 2

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tk = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises its own exception types for a damaged file
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from None
        try:
            return cls(tk)
        except ValueError as e:  # a tokenizer, but not this package's: say which file
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def default(cls) -> TextTokenizer:
        return cls.load(DEFAULT_PATH)

    def save(self, path: str | Path) -> None:
        self.tk.save(str(path))

    def id(self, token: str) -> int:
        i = self.tk.token_to_id(token)
        if i is None:
            raise KeyError(f"unknown token {token!r}")
        return i

    def encode(self, text: str) -> list[int]:
        """Token ids of text; a special token's name in it (e.g. "<answer>") becomes that token."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def specials_in(self, text: str) -> list[str]:
        """The special tokens whose names occur in text (user text holding them could write the
        format's own tags: close its block, open an answer)."""
        return [t for t in SPECIAL_TOKENS if t in text] if "<" in text else []

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = list(ids)
        # the library drops ids past the vocabulary without a word (a visual code id decodes to "") and
        # fails on a negative one with an OverflowError
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {bad[0]!r}"
                             f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}")
        return self.tk.decode(ids, skip_special_tokens=skip_special)

    def __len__(self) -> int:
        return self.vocab_size
