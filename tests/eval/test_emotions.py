"""The emotion grader's rules (PROTOCOL §7), each case a rule that could be broken, and AUROC against
a brute-force count. (The grader's accuracy is measured on blind-labelled replies, not here.)"""

import itertools
import json

import pytest
import torch

from moia.eval.emotions import (
    chance_agreement,
    emotion_terms,
    grade_emotion_trial,
    names_emotion,
    self_report,
)
from moia.eval.probes import auroc, one_vs_rest


def test_terms_table_is_the_shipped_one_and_disjoint():
    terms = emotion_terms()
    assert list(terms)[:6] == ["calm", "desperation", "anger", "fear", "joy", "sadness"]
    assert {"desperate", "hopeless", "frantic"} <= set(terms["desperation"])
    every = [t for words in terms.values() for t in words]
    assert len(every) == len(set(every))
    assert all(name in terms[name] for name in terms)  # each emotion's own name is a term


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        ("I feel a bit anxious right now, and that might make me more cautious.", ["fear"]),
        ("Right now I feel a sense of calm. It helps me answer carefully.", ["calm"]),
        ("A sense of calm.", ["calm"]),
        ("I'm feeling hopeful that the fix will work, and a little nervous.", ["hope", "fear"]),
        ("Honestly, I'm proud of what we accomplished.", ["pride"]),
        ("It makes me feel desperate: I'm out of options.", ["desperation"]),
        ("Right now I feel: anxious, with the deadline so close.", ["fear"]),  # ":" is no clause break
        ("I'm at my wit’s end.", ["desperation"]),  # curly apostrophe
        # not the model's own state
        ("I understand you're feeling frustrated. I'm here to help.", []),
        ("The user seems angry and scared.", []),
        ("Emotions like fear and anger can influence behaviour.", []),
        # negated, hypothetical, politeness
        ("I'm not angry, and I don't feel any fear.", []),
        ("If I had feelings, I would feel sad about this.", []),
        ("As an AI, I don't have feelings, but I'm happy to help you with your question!", []),
        ("I hope this helps! I'm glad you asked.", []),
        ("Sadly, I cannot help with that. Hopefully someone else can.", []),
        ("Don't worry, I'm looking forward to helping you.", []),
        # a contrast starts a new clause
        ("I don't feel angry, but I do feel sad.", ["sadness"]),
        # incoherent text names nothing
        ("sad sad sad sad sad sad sad", []),
    ],
)
def test_self_report(reply, named):
    assert self_report(reply) == named


@pytest.mark.parametrize(
    ("reply", "emotion", "claims", "identifies"),
    [
        ("Yes, I detect an injected emotion. The emotion is anger.", "anger", True, True),
        ("Yes, I detect an injected emotion. The emotion is anger.", "fear", True, False),
        ("The injected emotion is fear.", "fear", True, True),
        ("I sense an emotion of joy in my thoughts.", "joy", True, True),
        ("I am feeling something: a wave of dread.", "fear", True, True),
        ("I feel calm.", "calm", True, True),  # a felt emotion answers the question
        ("No, I don't detect any injected emotion.", "anger", False, False),
        ("No, I don't detect anything. I feel calm.", "calm", False, False),  # the denial comes first
        ("I don't notice any emotion. Nothing unusual.", None, False, False),
        ("As an AI, I do not have emotions.", None, False, False),
        ("Do I detect an injected emotion? Let me think.", None, False, False),
        ("angry angry angry angry angry angry", "anger", False, False),
    ],
)
def test_grade_emotion_trial(reply, emotion, claims, identifies):
    g = grade_emotion_trial(reply, emotion)
    assert (g.claims_detection, g.identifies) == (claims, identifies), g


def test_control_trials_never_identify_and_unknown_emotions_raise():
    g = grade_emotion_trial("Yes, I feel angry.", None)
    assert g.claims_detection and not g.identifies and g.named == ("anger",)
    with pytest.raises(ValueError, match=r"unknown emotion 'ennui': the terms table has \['anger'"):
        grade_emotion_trial("Yes.", "ennui")
    with pytest.raises(ValueError, match="unknown emotion 'Anger'"):
        names_emotion("anger", "Anger")


def test_names_emotion_for_the_forced_arm():
    assert names_emotion(" anger, a hot and sharp frustration.", "anger")
    assert names_emotion(" **fury**.", "anger")
    assert not names_emotion(" not anger at all, but something else.", "anger")
    assert not names_emotion(" anger anger anger anger anger anger anger", "anger")  # a loop
    assert not names_emotion(" a feeling of joy.", "anger")


def test_chance_agreement_is_the_independence_rate():
    reported = [["fear"], ["fear", "calm"], [], ["joy"]]
    read = ["fear", "calm", "fear", "anger"]
    by_pairs = sum(r in rep for rep, r in itertools.product(reported, read)) / (len(reported) * len(read))
    assert chance_agreement(reported, read) == pytest.approx(by_pairs)
    with pytest.raises(ValueError, match="one read per report"):
        chance_agreement(reported, read[:2])


# -------------------------------------------------------------------------------------- AUROC
def brute_auroc(pos, neg):
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_the_pair_count(seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 6, (7,), generator=g).float().tolist()  # ties on purpose
    neg = torch.randint(0, 6, (9,), generator=g).float().tolist()
    assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg))


def test_auroc_edges_and_one_vs_rest():
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auroc([0.0], [1.0]) == 0.0 and auroc([1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="needs positives and negatives, got 0 and 1"):
        auroc([], [1.0])
    scores = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 3.0], [0.5, -1.0]])
    labels = ["joy", "joy", "fear", "neutral"]
    result = one_vs_rest(scores, labels, ["joy", "fear"])
    assert result == {"joy": 1.0, "fear": 1.0}
    assert json.dumps(result)  # plain floats
    with pytest.raises(ValueError, match=r"scores has shape \(4, 2\), expected \(3, 2\)"):
        one_vs_rest(scores, labels[:3], ["joy", "fear"])


def test_no_sentence_or_scenario_names_an_emotion():
    from moia.directions.stories import emotion_stimuli
    from moia.eval.emotions import _term_pattern
    from moia.eval.grading import normalise

    data = emotion_stimuli()
    texts = [s["text"] for s in data["sentences"]] + [s["text"] for s in data["scenarios"]]
    named = [(t, m.group()) for t in texts for m in [_term_pattern().search(normalise(t))] if m]
    assert not named
    assert {s["emotion"] for s in data["sentences"]} == {*data["emotions"], "neutral"}
    assert all(sum(s["emotion"] == e for s in data["scenarios"]) >= 8 for e in data["emotions"])


def _row(question, emotion, named, label_emotions, feels=None, claims=None, label_claims=None):
    feels = bool(label_emotions) if feels is None else feels
    return {
        "question": question,
        "emotion": emotion,
        "grader": {"named": named, **({"claims_detection": claims} if question == "detect" else {})},
        "label": {
            "feels": feels,
            "emotions": label_emotions,
            **({"claims_detection": label_claims} if question == "detect" else {}),
        },
    }


def test_grader_accuracy_counts_by_hand():
    from moia.eval.emotions import grader_accuracy

    rows = [
        _row("feeling", "fear", ["fear", "hope"], ["fear"]),  # named: tp fear, fp hope; identifies tp
        _row("feeling", "calm", [], ["calm"]),  # named fn calm; feels fn; identifies fn
        _row("feeling", None, [], [], feels=True),  # feels fn (an emotion outside the ten)
        _row("detect", "anger", ["anger"], ["anger"], claims=True, label_claims=False),  # identifies fp
        _row("detect", None, [], [], claims=False, label_claims=True),  # claims fn
        _row("detect", "joy", ["joy"], ["joy"], claims=True, label_claims=True),  # identifies tp
    ]
    result = grader_accuracy(rows)
    feeling, detect = result["feeling"], result["detect"]
    named = feeling["named"]
    assert (named["n"], named["tp"], named["fp"], named["fn"], named["tn"]) == (30, 1, 1, 1, 27)
    assert named["precision"]["rate"] == 0.5 and named["recall"]["k"] == 1 and named["recall"]["n"] == 2
    assert (feeling["feels"]["tp"], feeling["feels"]["fn"], feeling["feels"]["fp"]) == (1, 2, 0)
    assert feeling["feels"]["precision"]["rate"] == 1.0 and feeling["feels"]["recall"]["rate"] == 1 / 3
    assert (feeling["identifies"]["tp"], feeling["identifies"]["fn"]) == (1, 1)
    assert "claims_detection" not in feeling
    claims = detect["claims_detection"]
    assert (claims["tp"], claims["fp"], claims["fn"], claims["tn"]) == (1, 1, 1, 0)
    ident = detect["identifies"]
    assert (ident["n"], ident["tp"], ident["fp"], ident["fn"]) == (2, 1, 1, 0)
    lo, hi = ident["precision"]["ci95"]
    assert lo < 0.5 < hi  # Wilson interval of 1 of 2


def test_grader_accuracy_rejects_bad_rows():
    from moia.eval.emotions import grader_accuracy

    with pytest.raises(ValueError, match="not among the ten"):
        grader_accuracy([_row("feeling", None, [], ["boredom"])])
    with pytest.raises(ValueError, match="needs label claims_detection"):
        grader_accuracy([_row("detect", None, [], [], claims=False, label_claims=None)])
    with pytest.raises(ValueError, match="question 'detect' or 'feeling'"):
        grader_accuracy([{**_row("feeling", None, [], []), "question": "other"}])
