"""Data files as they come from the internet (tests/hostile.py writes them): every complete record is kept,
every cut, loop, depth and oddity is a named, counted skip, and nothing raises."""
import json
import tracemalloc

import pytest

import hostile as H
from convlearn.data.inspect import inspect_source
from convlearn.data.readers import read_rows
from helpers import cli


def kept_and_skipped(path, fmt="auto"):
    stats = inspect_source(str(path), fmt, heldout_fraction=0.0)
    return stats.conversations, dict(stats.skipped), stats


@pytest.mark.parametrize("pretty", [False, True])
def test_a_json_array_cut_inside_its_last_record_keeps_every_complete_one(tmp_path, pretty):
    path, complete = H.truncated_array(tmp_path / "dump.json", 100, pretty)
    kept, skipped, _ = kept_and_skipped(path)
    assert kept == complete == 99 and skipped == {"truncated": 1}


def test_a_big_json_array_streams_in_constant_memory(tmp_path):
    small, big = H.big_array(tmp_path / "small.json", 2_000), H.big_array(tmp_path / "big.json", 40_000)

    def peak(path):
        tracemalloc.start()
        n = sum(1 for _ in read_rows(str(path)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return n, peak
    (n_small, p_small), (n_big, p_big) = peak(small), peak(big)
    assert (n_small, n_big) == (2_000, 40_000)
    assert big.stat().st_size > 15 * small.stat().st_size
    assert p_big < 2 * p_small + 1_000_000  # not proportional to the file (it is 20x bigger)


def test_bom_and_utf16_files_keep_every_row(tmp_path):
    assert kept_and_skipped(H.with_bom(tmp_path / "bom.jsonl"))[:2] == (5, {})
    for bom in (True, False):
        kept, skipped, stats = kept_and_skipped(H.utf16(tmp_path / f"u16-{bom}.jsonl", bom=bom))
        assert (kept, skipped) == (5, {}) and stats.format == "lmsys"
    rows = [r for r in read_rows(str(tmp_path / "u16-True.jsonl"))]
    assert rows[0]["conversation"][0]["content"] == "Grüße 0"


def test_json_nested_ten_thousand_deep_is_a_counted_skip(tmp_path):
    assert kept_and_skipped(H.deep(tmp_path / "deep.jsonl"))[:2] == (2, {"too_deep": 1})
    assert kept_and_skipped(H.deep_array(tmp_path / "deep.json"))[:2] == (2, {"too_deep": 1})


def test_oasst_chain_of_5000_messages_is_one_conversation(tmp_path):
    kept, skipped, stats = kept_and_skipped(H.oasst_chain(tmp_path / "chain.jsonl"))
    assert kept == 1 and skipped == {} and stats.messages == 5000


def test_oasst_loops_are_counted_and_reused_ids_stay_in_their_tree(tmp_path):
    path = H.oasst_cycle_and_reused_ids(tmp_path / "trees.jsonl")
    kept, skipped, _ = kept_and_skipped(path)
    assert kept == 2 and skipped == {"cycle": 3}
    from convlearn.config import DataConfig, SourceConfig
    from convlearn.data.records import DataStats
    from convlearn.data.stream import iter_records
    convs = [k.record for k in iter_records(DataConfig(sources=[SourceConfig(path=str(path))],
                                                       heldout_fraction=0.0), DataStats())]
    assert sorted(c.messages[0].content + " / " + c.messages[1].content for c in convs) == [
        "question of tree A / answer of tree A", "question of tree B / answer of tree B"]


def test_a_cut_csv_gz_keeps_the_rows_read(tmp_path):
    path, n = H.truncated_csv_gz(tmp_path / "share.csv.gz")
    kept, skipped, _ = kept_and_skipped(path, "sharechat")
    # the conversation the cut fell inside may have lost its answer: then it is a counted no_exchange
    assert 0 < kept < n and skipped.pop("truncated") == 1 and skipped in ({}, {"no_exchange": 1})


def test_an_unclosed_csv_quote_is_counted_and_reading_resumes(tmp_path):
    kept, skipped, _ = kept_and_skipped(H.unclosed_quote_csv(tmp_path / "share.csv"), "sharechat")
    assert kept == 4 and skipped["csv_quote"] == 1


def test_a_lone_surrogate_is_replaced_in_inspect_and_prepare(tmp_path, tiny_models, tokenizers):
    path = H.lone_surrogate(tmp_path / "s.jsonl")
    kept, skipped, stats = kept_and_skipped(path)
    assert (kept, skipped) == (2, {}) and stats.edits["lone_surrogate_replaced"] == 1
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.models import model_spec
    cfg = load_config(None, [f"model.name={tiny_models['qwen2']}", f"data.sources=[{{path: {path}}}]",
                             "data.heldout_fraction=0.0", f"data.cache_dir={tmp_path / 'cache'}"])
    meta = prepare(cfg, tokenizers["qwen2"], model_spec(cfg.model.name), progress=False).meta
    assert meta["train_rows"] == 2 and meta["data"]["edits"]["lone_surrogate_replaced"] == 1


def test_a_huge_message_is_skipped_before_tokenizing(tmp_path):
    kept, skipped, _ = kept_and_skipped(H.huge_message(tmp_path / "h.jsonl"))
    assert kept == 1 and skipped == {"message_too_long": 1}


def test_inspect_reads_the_whole_corpus_without_a_traceback(tmp_path):
    H.write_all(tmp_path / "corpus")
    for path in sorted((tmp_path / "corpus").iterdir()):
        fmt = "sharechat" if ".csv" in path.name else "auto"
        res = cli("data", "inspect", path, "--json", "--format", fmt)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (path.name, res.stderr[-500:])
        assert json.loads(res.stdout)["conversations"] >= 1, path.name
