"""vocab: the trimmed tokenizer encodes in-vocabulary text exactly like the original (same tokens; ids mapped
consistently), any text still tokenizes, and the trimmed model gives identical logits on that text."""

from __future__ import annotations

import json

import numpy as np
import torch
from tokenizers import Tokenizer

from zinfer_model.data import encode
from zinfer_model.metrics import torch_logits
from zinfer_model.modeling import trim_embeddings
from zinfer_model.steps import original_tokenizer_path
from zinfer_model.vocab import SPECIAL_TOKENS, check_same_tokens, trim_tokenizer


def test_trimmed_tokenizer_matches_original(splits, tokenizer, teacher, tmp_path):
    corpus = [t for t, _ in splits.train]
    text, keep_ids, stats = trim_tokenizer(original_tokenizer_path(), corpus)
    assert stats["trimmed_vocab"] == len(keep_ids) < stats["original_vocab"] == 30522
    path = tmp_path / "tokenizer.json"
    path.write_text(text, encoding="utf-8")
    trimmed = Tokenizer.from_file(str(path))
    spec = json.loads(text)
    assert spec["truncation"] is None and spec["padding"] is None
    assert [trimmed.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]

    # in-vocabulary text (the training corpus): same token strings, ids mapped through keep_ids
    assert check_same_tokens(original_tokenizer_path(), trimmed, corpus, 128) == len(corpus)
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    for t in corpus[:50]:
        a, b = tokenizer.encode(t), trimmed.encode(t)
        assert a.tokens == b.tokens
        assert a.ids == [keep_ids[i] for i in b.ids]

    # anything still tokenizes: unseen words split into smaller kept pieces, unknown characters → [UNK]
    enc = trimmed.encode("Zyzzyva's über-paradoxical 🎬 cinematography")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert all(trimmed.token_to_id(t) is not None for t in enc.tokens)

    # the trimmed model on trimmed ids == the full model on the original ids
    data_orig = encode(tokenizer, splits.train[:30], 64)
    ref = torch_logits(teacher, data_orig)
    trim_embeddings(teacher, keep_ids)
    assert teacher.bert.embeddings.word_embeddings.weight.shape == (len(keep_ids), 64)
    got = torch_logits(teacher, encode(trimmed, splits.train[:30], 64))
    np.testing.assert_array_equal(ref, got)
    assert torch.equal(teacher.bert.embeddings.word_embeddings.weight[2],
                       teacher.bert.embeddings.word_embeddings.weight[trimmed.token_to_id("[CLS]")])


def test_keep_whole_words_keeps_pretrained_words(splits):
    corpus = [t for t, _ in splits.train]
    _, keep_small, _ = trim_tokenizer(original_tokenizer_path(), corpus)
    text, keep_big, stats = trim_tokenizer(original_tokenizer_path(), corpus, keep_whole_words=True)
    assert set(keep_small) < set(keep_big) and stats["keep_whole_words"]
    trimmed = Tokenizer.from_str(text)
    original = Tokenizer.from_file(str(original_tokenizer_path()))
    original.no_padding()
    vocab = original.get_vocab()
    small = set(keep_small)
    # whole words of the original vocabulary that the small corpus never used: kept as one piece
    words = sorted(w for w, i in vocab.items() if w.isalpha() and len(w) >= 6 and i not in small)[:20]
    assert words
    for word in words:
        assert original.encode(word, add_special_tokens=False).tokens == [word]
        assert trimmed.encode(word, add_special_tokens=False).tokens == [word]
