"""fpquant_ext.perplexity against a hand computation on a tiny bigram model."""

import math

import pytest
import torch

from fpquant_ext.perplexity import perplexity, windows


class Bigram(torch.nn.Module):
    """logits[t] = table[ids[t]]: the next-token distribution depends on the current token only."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, ids):
        return self.table[ids]


class WithLogits(Bigram):
    def forward(self, ids):
        return type("Out", (), {"logits": super().forward(ids)})()


def hand_perplexity(table, chunks) -> float:
    nll, n = 0.0, 0
    for chunk in chunks:
        for cur, nxt in zip(chunk[:-1], chunk[1:]):
            row = [float(v) for v in table[cur]]
            log_z = math.log(sum(math.exp(v) for v in row))
            nll += log_z - row[nxt]
            n += 1
    return math.exp(nll / n)


@pytest.mark.parametrize("model_cls", [Bigram, WithLogits])
def test_matches_hand_computation(seed, model_cls):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(7, 7, generator=g) * 2
    ids = torch.randint(0, 7, (23,), generator=g)
    result = perplexity(model_cls(table), ids, window=5)
    chunks = [ids[i:i + 5].tolist() for i in range(0, 20, 5)]  # the 3-token tail is dropped
    assert result.windows == 4 and result.predicted == 16 and result.window == 5
    assert result.perplexity == pytest.approx(hand_perplexity(table, chunks), rel=1e-5)
    assert result.tokens_per_s > 0


def test_uniform_model_has_vocabulary_perplexity():
    ids = torch.arange(40) % 11
    assert perplexity(Bigram(torch.zeros(11, 11)), ids, window=8).perplexity == pytest.approx(11, rel=1e-6)


def test_max_windows_and_short_text():
    table = torch.randn(5, 5)
    ids = torch.randint(0, 5, (30,))
    one = perplexity(Bigram(table), ids, window=10, max_windows=1)
    assert one.windows == 1 and one.predicted == 9
    assert one.perplexity == pytest.approx(hand_perplexity(table, [ids[:10].tolist()]), rel=1e-5)
    short = perplexity(Bigram(table), ids[:4], window=512)  # no full window: the whole text
    assert short.windows == 1 and short.predicted == 3


def test_windows_do_not_overlap():
    ids = torch.arange(100)
    chunks = windows(ids, 32)
    assert [c[0].item() for c in chunks] == [0, 32, 64]
    assert torch.cat(chunks).tolist() == list(range(96))


@pytest.mark.parametrize("n, window", [(1, 8), (10, 1)])
def test_bad_input(n, window):
    with pytest.raises(ValueError):
        windows(torch.arange(n), window)


def test_enough_tokens_from_text_of_many_characters_per_token():
    # Only a prefix of a long text is tokenized, grown until it holds the tokens asked for (a text of 50
    # characters per token must still give them), and never past the text.
    from fpquant_ext.jobs import _token_ids
    calls = []

    def tokenizer(text, add_special_tokens=False):
        calls.append(len(text))
        return {"input_ids": list(range(len(text) // 50))}

    text = " " * 50_000
    assert _token_ids(tokenizer, text, 256).numel() >= 256 and max(calls) < len(text)
    assert _token_ids(tokenizer, text, 5000).numel() == 1000 and calls[-1] == len(text)
    assert _token_ids(tokenizer, text, None).numel() == 1000


def test_max_windows_below_one_is_refused():
    # 0 windows used to fail deep inside with IndexError / ZeroDivisionError.
    with pytest.raises(ValueError, match="max_windows"):
        windows(torch.arange(20), 5, 0)
    with pytest.raises(ValueError, match="max_windows"):
        perplexity(Bigram(torch.zeros(5, 5)), torch.arange(20) % 5, window=5, max_windows=0)


def test_prefix_tokens_match_the_whole_text():
    # A prefix cut inside a word tokenizes that word differently (here: to another id); when the prefix held
    # just about the tokens asked for, the last window was scored on that broken token.
    from fpquant_ext.jobs import _token_ids

    vocab = {}

    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": [vocab.setdefault(w, len(vocab)) for w in text.split()]}

    # The first prefix (8 characters per token: 80) ends inside the 10th word, the last token asked for.
    text = " ".join(["abcdefg"] * 9 + ["x" * 20] + ["abcdefg"] * 1000)
    whole = tokenizer(text)["input_ids"]
    ids = _token_ids(tokenizer, text, 10)
    assert ids.numel() >= 10 and ids.tolist() == whole[:ids.numel()]
