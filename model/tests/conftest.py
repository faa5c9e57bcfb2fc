"""Shared fixtures: a tiny random BERT teacher and a small slice of the real data (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

import zinfer_model  # noqa: F401  (sets the offline environment first)
from zinfer_model.data import encode, load_rotten_tomatoes
from zinfer_model.modeling import bert_config, new_model
from zinfer_model.steps import original_tokenizer_path

MAX_LEN = 64


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def splits():
    return load_rotten_tomatoes(0).limit(120, 40, 40)


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer.from_file(str(original_tokenizer_path()))


@pytest.fixture(scope="session")
def encoded(splits, tokenizer):
    return encode(tokenizer, splits.train, MAX_LEN), encode(tokenizer, splits.val, MAX_LEN)


def tiny_teacher(seed: int = 0, vocab: int = 30522):
    """hidden 64, 4 heads of 16, 2 layers, FFN 128."""
    torch.manual_seed(seed)
    model = new_model(bert_config(vocab_size=vocab, hidden=64, layers=2, heads=4, intermediate=128,
                                  max_position=128, dropout=0.0, attention_dropout=0.0))
    with torch.no_grad():  # wider margins than a fresh init, so int8 rounding rarely flips a label
        model.classifier.weight.mul_(20.0)
    return model.eval()


@pytest.fixture()
def teacher():
    return tiny_teacher()
