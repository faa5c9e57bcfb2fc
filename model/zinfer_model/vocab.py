"""Vocabulary trimming: keep the WordPiece pieces the training corpus uses, the special tokens and every
single-character piece (so any text still tokenizes), and rewrite tokenizer.json with consistent ids.

On text made only of kept pieces the trimmed tokenizer gives the original's token strings; a word outside them
splits into smaller pieces instead, and characters the original lacks become [UNK] as before.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # new ids 0..4


def trim_tokenizer(original_path: Path, corpus: list[str], min_count: int = 1,
                   keep_whole_words: bool = False) -> tuple[str, list[int], dict]:
    """Return (tokenizer JSON text, keep_ids, stats): new id i is old id keep_ids[i].

    keep_whole_words also keeps every word-initial piece of the original vocabulary (no `##`, no `[unused…]`),
    so that words absent from the corpus keep their pretrained embedding instead of splitting into pieces."""
    original = Tokenizer.from_file(str(original_path))
    original.no_truncation()
    original.no_padding()
    spec = json.loads(Path(original_path).read_text(encoding="utf-8"))
    if spec["model"]["type"] != "WordPiece":
        raise ValueError(f"{original_path}: only WordPiece tokenizers can be trimmed")
    old_vocab: dict[str, int] = spec["model"]["vocab"]
    prefix = spec["model"]["continuing_subword_prefix"]
    missing = [t for t in SPECIAL_TOKENS if t not in old_vocab]
    if missing:
        raise ValueError(f"{original_path}: special tokens {missing} missing")

    counts: Counter[str] = Counter()
    for enc in original.encode_batch(corpus, add_special_tokens=False):
        counts.update(enc.tokens)
    used = {t for t, c in counts.items() if c >= min_count}

    def single_piece(tok: str) -> bool:
        body = tok[len(prefix):] if tok.startswith(prefix) else tok
        return len(body) == 1

    def whole_word(tok: str) -> bool:
        return keep_whole_words and not tok.startswith(prefix) and not tok.startswith("[unused")

    keep = [t for t, _ in sorted(old_vocab.items(), key=lambda kv: kv[1])
            if t not in SPECIAL_TOKENS and (t in used or single_piece(t) or whole_word(t))]
    new_tokens = SPECIAL_TOKENS + keep
    new_vocab = {t: i for i, t in enumerate(new_tokens)}
    keep_ids = [old_vocab[t] for t in new_tokens]

    spec["model"]["vocab"] = new_vocab
    for added in spec.get("added_tokens", []):
        added["id"] = new_vocab[added["content"]]
    post = spec.get("post_processor") or {}
    for st in post.get("special_tokens", {}).values():
        st["ids"] = [new_vocab[t] for t in st["tokens"]]
    if post.get("type") == "BertProcessing":  # older layout: sep/cls as [token, id]
        for key in ("sep", "cls"):
            post[key][1] = new_vocab[post[key][0]]
    spec["truncation"] = None
    spec["padding"] = None
    text = json.dumps(spec, ensure_ascii=False, indent=2) + "\n"
    stats = {"original_vocab": len(old_vocab), "trimmed_vocab": len(new_vocab), "used_pieces": len(used),
             "single_char_pieces": sum(1 for t in keep if single_piece(t)), "min_count": min_count,
             "keep_whole_words": keep_whole_words}
    return text, keep_ids, stats


def check_same_tokens(original_path: Path, trimmed: Tokenizer, texts: list[str], max_length: int) -> int:
    """Raise if the trimmed tokenizer's token strings differ from the original's on any of `texts`."""
    original = Tokenizer.from_file(str(original_path))
    original.no_padding()
    original.enable_truncation(max_length)
    trimmed.no_padding()
    trimmed.enable_truncation(max_length)
    for i, text in enumerate(texts):
        a, b = original.encode(text).tokens, trimmed.encode(text).tokens
        if a != b:
            raise AssertionError(f"trimmed tokenizer differs on text {i}: {text!r}\n{a}\n{b}")
    return len(texts)
