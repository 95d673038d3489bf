"""bench/local_sampling.py's scoring: what counts as a correct answer and as a loop."""

from __future__ import annotations

import argparse

from bench.local_sampling import QUESTIONS, SETTINGS, Setting, Tally, is_correct, loops, periodic_tail, report
from patchbay.providers.local.model import Sampling


def test_a_correct_answer_contains_an_accepted_whole_word() -> None:
    assert is_correct("The capital of France is PARIS.", ("paris",))
    assert is_correct("It has 8 legs.", ("eight", "8"))
    assert not is_correct("There are 24 hours.", ("4", "four"))  # "4" inside "24" is not the answer
    assert not is_correct("Parisian food", ("paris",))
    assert is_correct("Water freezes at 0°C.", ("0", "zero"))
    assert is_correct("Plants take in carbon dioxide.", ("carbon dioxide", "co2"))
    assert not is_correct("It is 129.7 million km across.", ("seven", "7"))
    assert is_correct("The answer is 4.", ("four", "4"))
    assert is_correct("4, of course", ("four", "4"))


def test_a_loop_is_one_phrase_repeated_three_times_at_the_end() -> None:
    assert loops("Il Coriobella, il Coriobella, il Coriobella, il")
    assert loops("la Femme, la Femme, la Femme, la Femme,")
    assert not loops("The capital of France is Paris.")
    assert not loops("very very very good")  # short repeats in passing are not a loop
    assert not loops("la Femme, la Femme, and then something else entirely.")


def test_the_questions_and_settings_are_well_formed() -> None:
    assert len(QUESTIONS) >= 20 and len({q.text for q in QUESTIONS}) == len(QUESTIONS)
    assert all(q.accepted and all(a == a.lower() for a in q.accepted) for q in QUESTIONS)
    assert len(set(SETTINGS)) == len(SETTINGS)
    assert any(s.greedy for s in SETTINGS) and any(not s.greedy for s in SETTINGS)
    # The default is one of the measured settings:
    assert sum(s.is_default() for s in SETTINGS) == 1


def test_the_report_marks_the_default_and_names_the_best() -> None:
    default = Sampling()
    chosen = Setting(default.temperature, top_p=default.top_p, min_p=default.min_p,
                     repeat_penalty=default.repeat_penalty)
    other = Setting(0.9, top_p=0.9, min_p=0.0, repeat_penalty=1.0)
    results = [(other, Tally(runs=10, correct=3, looped=2)), (chosen, Tally(runs=10, correct=7))]
    text = report(results, argparse.Namespace(seeds=[1, 2], max_tokens=48))
    assert text.startswith("## Embedded model sampling")
    assert "python -m bench.local_sampling --seeds 2 --max-tokens 48" in text
    assert f"| {chosen.label()} **(default)** | 7/10 (70%) | 0% |" in text
    assert f"| {other.label()} | 3/10 (30%) | 20% |" in text
    words = " ".join(text.split())
    assert f"Best: {chosen.label()}, 70%; the most correct row otherwise: {other.label()}, 30%." in words


def test_within_a_tie_a_sampled_setting_beats_a_greedy_one() -> None:
    greedy = Setting(0.0, repeat_penalty=1.2)
    sampled = Setting(0.5, min_p=0.1, repeat_penalty=1.2)
    far = Setting(0.8, top_p=0.95)
    results = [(greedy, Tally(runs=24, correct=18)), (sampled, Tally(runs=72, correct=53)),
               (far, Tally(runs=72, correct=41))]
    words = " ".join(report(results, argparse.Namespace(seeds=[1, 2, 3], max_tokens=48)).split())
    assert f"Best: {sampled.label()}, 74%; the most correct row otherwise: {greedy.label()}, 75%." in words
    results[1] = (sampled, Tally(runs=72, correct=45))  # 62%: no longer a tie, greedy is best
    words = " ".join(report(results, argparse.Namespace(seeds=[1, 2, 3], max_tokens=48)).split())
    assert f"Best: {greedy.label()}, 75%" in words


def test_periodic_tail() -> None:
    assert periodic_tail([1, 2, 3, 1, 2, 3, 1]) == (3, 7)
    assert periodic_tail([5, 5, 5, 5]) == (1, 4)
    assert periodic_tail([1, 2, 3]) == (0, 0)
    assert periodic_tail([]) == (0, 0)
    assert periodic_tail("xyzabab") == (2, 4)
    assert periodic_tail([1, 2] * 40, max_period=1) == (0, 0)
