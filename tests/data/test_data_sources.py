"""Every source format: exact kept / skipped counts on fixtures holding malformed rows of every reason."""
import json

import pytest

import datafiles as F
from convlearn.config import DataConfig, SourceConfig, load_config
from convlearn.data.records import DataStats
from convlearn.data.stream import iter_records


def read(path, fmt="auto", **data):
    cfg = DataConfig(sources=[SourceConfig(path=str(path), format=fmt,
                                           oasst_best_path_only=data.pop("best", False))], **data)
    stats = DataStats()
    records = [k.record for k in iter_records(cfg, stats)]
    return records, stats.to_json()


def check(stats, expected):
    for key, value in expected.items():
        assert stats[key] == value, (key, stats[key])


@pytest.mark.parametrize("gz", [False, True])
def test_lmsys_jsonl(tmp_path, gz):
    path = F.write_jsonl(tmp_path / ("lmsys.jsonl.gz" if gz else "lmsys.jsonl"), F.lmsys_rows(), gz=gz)
    recs, stats = read(path)
    check(stats, F.LMSYS_EXPECTED)
    assert stats["format"] == "lmsys" and stats["rows"] == 14
    by_id = {r.id: r for r in recs}
    assert [m.content for m in by_id["a2"].messages] == ["Tell me a joke.\n\nA short one.", "Why did...\n\nAnother?"]
    assert [m.role for m in by_id["a14"].messages] == ["user", "assistant"]
    assert by_id["a13"].messages[0].content == (
        "Mail me at <EMAIL>, key <API_KEY>, call <PHONE>, server <IP_ADDRESS>")
    assert by_id["a1"].meta["redacted"] is True and "NAME_1" in by_id["a1"].messages[0].content
    assert by_id["a12"].language == "es" and by_id["a1"].language == "en"
    assert stats["languages"] == {"en": 4, "es": 1}


def test_lmsys_filters(tmp_path):
    path = F.write_jsonl(tmp_path / "lmsys.jsonl", F.lmsys_rows())
    _, stats = read(path, languages=["en"], drop_flagged=False, min_chars=20, max_chars=60)
    assert stats["conversations"] == 3  # a1 (54 chars), a2 (48), a14 (21)
    assert stats["skipped"]["language"] == 1 and "moderation" not in stats["skipped"]
    assert stats["skipped"]["too_short"] == 1 and stats["skipped"]["too_long"] == 1  # a3 (11), a13
    _, nodedup = read(path, dedup=False)
    assert nodedup["conversations"] == 6 and "duplicate" not in nodedup["skipped"]
    recs, unscrubbed = read(path, scrub=False)
    assert unscrubbed["scrubbed"] == {} and any("jane.doe@example.com" in r.messages[0].content for r in recs)


def test_sharegpt_json_with_html(tmp_path):
    recs, stats = read(F.write_json(tmp_path / "sg.json", F.sharegpt_rows()))
    check(stats, F.SHAREGPT_EXPECTED)
    assert stats["format"] == "sharegpt"
    by_id = {r.id: r for r in recs}
    assert by_id["s1"].messages[1].content == 'Use print:\n\n```\nprint("hi")\n```\n\n- one\n\n- two'
    assert [m.role for m in by_id["s3"].messages] == ["system", "user", "assistant"]
    assert [m.content for m in by_id["s2"].messages] == ["Name a colour.", "Blue."]
    assert stats["edits"] == {"leading_assistant_dropped": 1}


def test_sharechat_csv(tmp_path):
    path = F.write_csv(tmp_path / "sharechat.csv", F.sharechat_rows(), F.SHARECHAT_FIELDS)
    recs, stats = read(path)
    check(stats, F.SHARECHAT_EXPECTED)
    assert stats["format"] == "sharechat"
    a = next(r for r in recs if r.id == "https://share/a")
    assert [m.role for m in a.messages] == ["user", "assistant"] and a.meta["platform"] == "claude"


@pytest.mark.parametrize("layout", ["flat-parquet", "nested-jsonl"])
def test_oasst_trees(tmp_path, layout):
    if layout == "flat-parquet":
        path = F.write_parquet(tmp_path / "oasst.parquet", F.oasst_flat_rows())
    else:
        path = F.write_jsonl(tmp_path / "oasst.jsonl", F.oasst_nested_rows())
    recs, stats = read(path)
    check(stats, F.OASST_EXPECTED)
    assert stats["format"] == "oasst"
    assert sorted(r.id for r in recs) == ["t1:a3", "t1:a6", "t1:a7"]
    assert stats["edits"] == {"oasst_path_ending_with_prompter": 2}
    best, best_stats = read(path, best=True)
    assert [[m.content for m in r.messages] for r in best] == F.OASST_BEST
    assert {r.meta["split_group"] for r in recs} == {"t1"}


def test_text_documents(tmp_path):
    recs, stats = read(F.write_jsonl(tmp_path / "c4.jsonl.gz", F.text_rows(), gz=True))
    check(stats, F.TEXT_EXPECTED)
    assert stats["format"] == "text" and stats["conversations"] == 0
    assert recs[0].id == "https://example.com/fox" and recs[1].id == "rp-1"
    assert recs[1].meta["source"] == "arxiv" and recs[2].text.endswith("<EMAIL>.")


def test_chatterbot_folder(tmp_path):
    recs, stats = read(F.write_chatterbot(tmp_path / "cb"))
    check(stats, F.CHATTERBOT_EXPECTED)
    assert {r.domain for r in recs} == {"food", "sports"}
    assert len(recs[1].messages) == 4


def test_bundled_chatterbot_corpus():
    recs, stats = read("chatterbot", heldout_fraction=0.0)
    assert stats["rows"] == 2026
    assert stats["conversations"] == 898 and stats["skipped"] == {"duplicate": 1127, "wrong_type": 1}
    assert len(stats["domains"]) == 21


def test_dataset_folder_goes_through_datasets(tmp_path):
    """A local dataset folder takes the same `datasets.load_dataset(..., streaming=True)` path as a hub id."""
    rows = [r for r in F.lmsys_rows() if isinstance(r, dict) and isinstance(r.get("conversation"), list)]
    folder = tmp_path / "lmsys-hub-copy" / "data"
    folder.mkdir(parents=True)
    F.write_parquet(folder / "train-00000-of-00001.parquet", rows)
    recs, stats = read(folder.parent)
    assert stats["format"] == "lmsys" and stats["rows"] == len(rows) == 10
    assert stats["conversations"] == 5


def test_format_override_and_limit(tmp_path):
    path = F.write_jsonl(tmp_path / "lmsys.jsonl", F.lmsys_rows())
    _, stats = read(path, fmt="lmsys")
    assert stats["conversations"] == 5
    cfg = DataConfig(sources=[SourceConfig(path=str(path), limit=3)])
    stats3 = DataStats()
    list(iter_records(cfg, stats3))
    assert stats3.rows == 3 and stats3.conversations == 2 and dict(stats3.skipped) == {"moderation": 1}


def test_max_conversations_counts_training_only(tmp_path):
    path = F.write_jsonl(tmp_path / "lmsys.jsonl", F.lmsys_rows())
    cfg = DataConfig(sources=[SourceConfig(path=str(path))], max_conversations=2, heldout_fraction=0.0)
    stats = DataStats()
    assert len(list(iter_records(cfg, stats))) == 2


def test_bad_rows_never_take_good_ones(tmp_path):
    """Interleave every broken line with a good one: all good ones survive."""
    good = [{"conversation_id": f"g{i}", "conversation": [{"role": "user", "content": f"q{i}"},
                                                          {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]
    lines = []
    for i, g in enumerate(good):
        lines += [json.dumps(g), '{"oops": ', "null", '"string"']
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    recs, stats = read(path, heldout_fraction=0.0)
    assert [r.id for r in recs] == [f"g{i}" for i in range(5)]
    assert stats["skipped"] == {"invalid_json": 5, "not_an_object": 10}


def test_validation_mode_scores_a_training_slice_and_never_reads_the_test_side():
    """Learning-rate pilots select on `data.evaluate_on: validation`: the held-out side is a slice of the training
    side (not trained on) and the test conversations the report judges are neither trained on nor scored."""
    def sides(*sets):
        cfg = load_config(None, ["data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.2", *sets]).data
        keyed = list(iter_records(cfg, DataStats()))
        return {k.record.id for k in keyed if k.heldout}, {k.record.id for k in keyed if not k.heldout}
    test, train = sides()
    validation, pilot_train = sides("data.evaluate_on=validation", "data.validation_fraction=0.25")
    assert test and validation and not (validation | pilot_train) & test
    assert validation | pilot_train == train and not validation & pilot_train
    assert 0.15 < len(validation) / len(train) < 0.35
    assert sides("data.evaluate_on=validation", "data.validation_fraction=0.25") == (validation, pilot_train)
    # the held-out count of experiment 2 belongs to the test side; validation mode ignores it
    assert sides("data.evaluate_on=validation", "data.validation_fraction=0.25",
                 "data.heldout_conversations=5")[0] == validation
