"""The detectors against a corpus of secrets, personal data and near-misses: precision and recall."""

from __future__ import annotations

import json

from corpus import NEGATIVE, POSITIVE, PRIVATE_KEYS

from sluice.guard import Detector
from sluice.guard.detectors import masked_json, masked_pieces


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


def _expected_pieces(pieces: list[str], found) -> list[str]:
    """The oracle, char by char: each run of one finding's characters within a piece becomes one mask."""
    owner = [None] * sum(map(len, pieces))
    for n, f in enumerate(found):
        owner[f.start:f.end] = [n] * (f.end - f.start)
    out, at = [], 0
    for piece in pieces:
        text, prev = "", None
        for pos in range(at, at + len(piece)):
            if owner[pos] is None:
                text += piece[pos - at]
            elif owner[pos] != prev:
                text += f"[REDACTED:{found[owner[pos]].kind}]"
            prev = owner[pos]
        out.append(text)
        at += len(piece)
    return out


def test_a_finding_across_pieces_is_masked_in_exactly_the_pieces_it_spans():
    d = Detector()
    for value, kind in POSITIVE:
        text = f"before {value} after jane.doe@example.com end"
        found = d.find(text)
        step = max(1, len(text) // 23)
        for a in range(1, len(text), step):
            for b in (a + 1, a + 5, a + 17):
                pieces = [text[:a], text[a:b], "", text[b:]]
                masked = masked_pieces(pieces, found)
                assert masked == _expected_pieces(pieces, found), (value, a, b, masked)
                assert masked[2] == "" and "".join(masked).count("[REDACTED:") >= len(found)
                for f in found:  # nothing of a value is left in the joined text
                    assert text[f.start:f.end] not in "".join(masked)


def test_every_corpus_value_inside_json_is_found_and_masked_and_the_json_stays_json():
    d = Detector()
    for value, kind in POSITIVE + [(key, "private_key") for key in PRIVATE_KEYS]:
        for doc in ({"note": f"see\n{value}\tend", "n": 1}, {"list": [value], "deep": {"k": "\\" + value}},
                    {"quoted": f'"{value}"'}):
            raw = json.dumps(doc)
            found = d.find_json(raw)
            assert kind in {f.kind for f in found}, (kind, raw[:80])
            masked = masked_json(raw, found)
            back = json.dumps(json.loads(masked))  # still JSON
            assert f"[REDACTED:{kind}]" in back
            for f in found:
                assert json.dumps(raw[f.start:f.end])[1:-1] not in back, (kind, raw[f.start:f.end])
    # a card number that is a JSON number becomes its mask as a string
    assert json.loads(masked_json('{"card": 4111111111111111}', d.find_json('{"card": 4111111111111111}'))) == \
        {"card": "[REDACTED:card_number]"}
