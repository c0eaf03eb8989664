"""Knowledge metrics: exact numbers against hand computations and published values."""

from __future__ import annotations

import math

import pytest

from doctune.knowledge.metrics import (
    accuracy,
    exact_match,
    mc_accuracy,
    mc_choice,
    normalize_answer,
    stop_rate,
    token_f1,
    wilson_interval,
)


def test_normalize_answer_like_squad() -> None:
    assert normalize_answer("  The  Port, is: 5173!  ") == "port is 5173"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("`server.host`") == "serverhost"
    assert normalize_answer("theme") == "theme"  # "the" only as a whole word


def test_exact_match_against_several_golds() -> None:
    assert exact_match("the 5173", "5173") == 1.0
    assert exact_match("5174", ["5173", "port 5173"]) == 0.0
    assert exact_match("Port 5173.", ["5173", "port 5173"]) == 1.0
    with pytest.raises(ValueError):
        exact_match("x", [])


@pytest.mark.parametrize(("pred", "gold", "want"), [
    ("the quick brown fox", "quick fox jumps", 2 / 3),   # P = R = 2/3
    ("5173 port", "5173", 2 / 3),                       # P = 1/2, R = 1
    ("w x y z", "w", 2 * (1 / 4) * 1 / (1 / 4 + 1)),     # P = 1/4, R = 1
    ("x x y", "x y y", 2 / 3),                          # counts: common = min(2,1) + min(1,2)
    ("nothing", "else", 0.0),
    ("", "", 1.0),
    ("the", "answer", 0.0),                             # empty after normalising
])
def test_token_f1_known_pairs(pred: str, gold: str, want: float) -> None:
    assert abs(token_f1(pred, gold) - want) < 1e-12


def test_token_f1_is_the_best_over_golds() -> None:
    assert abs(token_f1("port 5173", ["5173", "the port 5173", "x"]) - 1.0) < 1e-12
    assert abs(token_f1("5173 port", ["5173", "zzz"]) - 2 / 3) < 1e-12


def test_mc_choice_raw_and_length_normalised() -> None:
    logprobs, lengths = [-4.0, -3.0, -9.0], [4, 1, 10]
    assert mc_choice(logprobs) == 1
    assert mc_choice(logprobs, lengths) == 2  # -0.9 per token beats -1.0 and -3.0
    assert mc_choice([-1.0, -1.0]) == 0  # ties go to the first option
    with pytest.raises(ValueError):
        mc_choice([-1.0], [0])


def test_mc_accuracy_counts_and_interval() -> None:
    items = [[-1.0, -2.0], [-3.0, -1.0], [-1.0, -0.8], [-2.0, -2.5]]
    acc = mc_accuracy(items, [0, 1, 0, 0])
    assert (acc.correct, acc.total, acc.value) == (3, 4, 0.75)
    assert (acc.low, acc.high) == wilson_interval(3, 4)
    lengths = [[1, 1], [1, 1], [2, 1], [1, 1]]  # item 3: -0.5 per token beats -0.8
    assert mc_accuracy(items, [0, 1, 0, 0], lengths=lengths).correct == 4


def test_wilson_interval_of_7_of_10() -> None:
    z = 1.959963984540054  # the 97.5% normal quantile
    n, p = 10, 0.7
    center, denom = p + z * z / (2 * n), 1 + z * z / n
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(7, 10)
    assert abs(low - (center - margin) / denom) < 1e-12
    assert abs(high - (center + margin) / denom) < 1e-12
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)  # published value


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert accuracy([]).value == 0.0


def test_stop_rate() -> None:
    gens = [[5, 6, 2], [5, 6], [], [2]]
    assert stop_rate(gens, 2) == 0.5
    assert stop_rate(gens, [2, 6]) == 0.75
    assert stop_rate([], 2) == 0.0


def test_an_answer_of_punctuation_alone_is_an_answer() -> None:
    """``/``, ``[]``, ``''`` normalise to nothing: an empty or unrelated reply must not
    match them, and a reply that gives them must."""
    from doctune.knowledge.metrics import answer_in_reply, answer_words

    assert answer_words("`[]`") == ["[]"] and answer_words("[ ]") == ["[]"]
    assert answer_words("The port") == ["port"] and answer_words("") == []
    assert exact_match("/", "/") == 1.0 and exact_match("`/`", ["/"]) == 1.0
    assert exact_match("", "/") == 0.0 and exact_match("./", "/") == 0.0
    assert exact_match("...", ["[]", "empty array"]) == 0.0
    assert token_f1("", "/") == 0.0 and token_f1("/", "/") == 1.0
    assert answer_in_reply("It defaults to `/`.", "/") == 1.0
    assert answer_in_reply("The default is /.", "/") == 1.0
    assert answer_in_reply("Set base to './' for an embedded deployment.", ["/"]) == 0.0
    assert answer_in_reply("Set base to './' for an embedded deployment.", ["./"]) == 1.0
    assert answer_in_reply("It is served from /app/ by default.", "/") == 0.0
    assert answer_in_reply("server.allowedHosts is [] unless set", ["[]", "empty array"]) == 1.0
    assert answer_in_reply("an empty string ('')", ["''"]) == 1.0
    assert answer_in_reply("", "/") == 0.0
