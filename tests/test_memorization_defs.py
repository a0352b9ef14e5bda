"""Memorization records and statistics (rethink.memorization.tracking; MEASURES.md sec. 5)."""

import json

import numpy as np
import pytest

from rethink.memorization import (
    first_learned,
    forgetting_events,
    fraction_learned,
    learned_order,
    never_learned,
    pack,
    pack_losses,
    summary,
    unpack,
    unpack_losses,
)

# Rows: evaluations at steps 0, 10, 20, 30. Columns: six examples.
#   0: correct from the start, never forgotten
#   1: learned at 10, forgotten at 20, relearned at 30  (one forgetting event)
#   2: never learned
#   3: learned at 20 and kept
#   4: correct, wrong, correct, wrong                   (two forgetting events)
#   5: learned only at the last evaluation (30)
CORRECT = np.array(
    [
        [1, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 0],
        [1, 1, 0, 1, 0, 1],
    ],
    dtype=bool,
)
STEPS = np.array([0, 10, 20, 30])


def test_first_learned_is_the_step_of_the_first_correct_evaluation():
    assert first_learned(CORRECT, STEPS).tolist() == [0, 10, -1, 20, 0, 30]


def test_first_learned_uses_steps_not_evaluation_indices():
    assert first_learned(CORRECT, np.array([5, 7, 100, 1000])).tolist() == [5, 7, -1, 100, 5, 1000]


def test_first_learned_with_no_evaluations_is_never():
    assert first_learned(np.zeros((0, 3), bool), np.array([], int)).tolist() == [-1, -1, -1]


def test_forgetting_events_count_correct_to_incorrect_transitions():
    assert forgetting_events(CORRECT).tolist() == [0, 1, 0, 0, 2, 0]
    # incorrect -> correct is learning, not forgetting; a single evaluation has no transitions
    assert forgetting_events(np.array([[0], [1]], bool)).tolist() == [0]
    assert forgetting_events(CORRECT[:1]).tolist() == [0] * 6


def test_never_learned_marks_examples_wrong_at_every_evaluation():
    assert never_learned(CORRECT).tolist() == [False, False, True, False, False, False]


def test_fraction_curves_per_group():
    everyone = fraction_learned(CORRECT)
    np.testing.assert_allclose(everyone, [2 / 6, 2 / 6, 3 / 6, 4 / 6])
    group = np.array([0, 1, 1, 0, 1, 0], bool)  # examples 1, 2, 4
    np.testing.assert_allclose(fraction_learned(CORRECT, group), [1 / 3, 1 / 3, 1 / 3, 1 / 3])
    # cumulative: learned at or before the evaluation, never decreasing
    np.testing.assert_allclose(fraction_learned(CORRECT, group, cumulative=True), [1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert np.isnan(fraction_learned(CORRECT, np.zeros(6, bool))).all()


def test_learned_order_ties_by_index_and_never_learned_last():
    assert learned_order(CORRECT, STEPS).tolist() == [0, 4, 1, 3, 5, 2]
    two_never = np.array([[0, 1, 0], [0, 1, 0]], bool)
    assert learned_order(two_never, np.array([1, 2])).tolist() == [1, 0, 2]


def test_summary_splits_clean_and_corrupted():
    corrupted = np.array([0, 1, 1, 0, 0, 1], bool)  # examples 1, 2, 5
    s = summary(CORRECT, STEPS, corrupted)
    json.dumps(s)  # plain types only
    clean, bad = s["clean"], s["corrupted"]
    assert (clean["examples"], bad["examples"]) == (3, 3)
    assert (clean["never_learned"], bad["never_learned"]) == (0, 1)
    assert clean["median_first_learned_step"] == 0.0  # examples 0, 3, 4: steps 0, 20, 0
    assert bad["median_first_learned_step"] == 20.0  # examples 1, 5: steps 10, 30 (2 never learned)
    assert (clean["forgetting_events"], bad["forgetting_events"]) == (2, 1)
    assert (clean["forgotten_examples"], bad["forgotten_examples"]) == (1, 1)
    assert bad["fraction_correct"] == pytest.approx([0, 1 / 3, 0, 2 / 3])
    assert bad["fraction_learned"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert s["median_ratio"] is None  # clean median 0: no ratio
    assert s["steps"] == [0, 10, 20, 30]


def test_summary_ratio_of_medians():
    steps = np.array([100, 200, 300, 400])
    corrupted = np.array([0, 0, 1, 1], bool)
    correct = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1]], bool)
    s = summary(correct, steps, corrupted)
    assert s["clean"]["median_first_learned_step"] == 150.0
    assert s["corrupted"]["median_first_learned_step"] == 350.0
    assert s["median_ratio"] == pytest.approx(350 / 150)


def test_summary_rejects_a_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="corrupted_mask"):
        summary(CORRECT, STEPS, np.zeros(5, bool))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 64, 1001])
def test_pack_round_trip(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    data = pack(bits)
    assert isinstance(data, bytes) and len(data) == (n + 7) // 8
    back = unpack(data, n)
    assert back.dtype == bool and back.tolist() == bits.tolist()


def test_pack_bit_order_is_little():
    bits = np.zeros(10, bool)
    bits[[0, 3, 9]] = True
    assert pack(bits) == bytes([0b00001001, 0b00000010])  # example i is bit i % 8 of byte i // 8


def test_unpack_rejects_the_wrong_length():
    with pytest.raises(ValueError, match="9 packed bits"):
        unpack(b"\x00", 9)


def test_losses_round_trip_in_one_byte_each_within_three_percent():
    losses = np.array([0.0, 1e-5, 1e-3, 0.5, 2.302585, 17.25, 1e5, np.inf, np.nan], dtype=np.float32)
    data = pack_losses(losses)
    assert len(data) == len(losses)
    back = unpack_losses(data)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back[2:6], losses[2:6], rtol=0.028)
    assert back[0] == back[1] == np.float32(1e-4) and back[6] == np.float32(100.0)  # clipped to [1e-4, 100]
    assert np.isinf(back[7]) and np.isinf(back[8])
    grid = np.geomspace(1e-4, 100, 1000)
    assert np.max(np.abs(unpack_losses(pack_losses(grid)) / grid - 1)) < 0.028
