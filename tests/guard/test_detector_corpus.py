"""The detectors against a corpus of secrets, personal data and near-misses: precision and recall."""

from __future__ import annotations

from corpus import NEGATIVE, POSITIVE

from sluice.guard import Detector


def test_corpus_has_at_least_100_cases_with_near_misses():
    assert len(POSITIVE) + len(NEGATIVE) >= 100
    assert len(NEGATIVE) >= 40


def test_precision_and_recall_over_the_corpus_and_near_misses_untouched():
    d = Detector()
    tp = fp = fn = 0
    missed, wrong = [], []
    for text, kind in POSITIVE:
        kinds = {f.kind for f in d.find(text)}
        if kind in kinds:
            tp += 1
        else:
            fn += 1
            missed.append((kind, text[:60], kinds))
        fp += len(kinds - {kind})
    for text in NEGATIVE:
        found = d.find(text)
        fp += len(found)
        if found:
            wrong.append((text[:60], [f.kind for f in found]))
        assert d.mask(text) == text  # a near-miss passes through untouched
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"\ndetector corpus: {len(POSITIVE)} positive, {len(NEGATIVE)} near-miss; "
          f"precision {precision:.3f}, recall {recall:.3f} (tp {tp}, fp {fp}, fn {fn})")
    assert not wrong, wrong
    assert recall >= 0.95, missed
    assert precision >= 0.95


def test_masking_keeps_the_text_around_and_nothing_of_the_value():
    d = Detector()
    for text, kind in POSITIVE:
        masked = d.mask(text)
        assert f"[REDACTED:{kind}]" in masked, (text, masked)
        for f in d.find(text):
            assert text[f.start:f.end] not in masked


def test_a_kind_subset_finds_only_its_kinds():
    d = Detector(["email"])
    assert [f.kind for f in d.find("jane@example.com AKIAIOSFODNN7EXAMPLE")] == ["email"]
