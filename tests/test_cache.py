"""The SQLite content-hash cache: persistence, several processes at once, pickling, JSONL caches of old runs."""

import json
import multiprocessing
import pickle

from medattack.storage import SqliteCache


def test_values_persist_and_a_miss_writes_no_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = SqliteCache(path)
    assert cache.get("absent") is None and not path.exists()  # a lookup alone makes no file
    cache.put_many([("a", {"value": 1.0, "detail": {"x": "é"}}), ("b", [1, 2])])
    again = SqliteCache(path)
    assert again.get("a") == {"value": 1.0, "detail": {"x": "é"}} and again.get("b") == [1, 2]
    assert again.hits == 2 and len(again) == 2


def _write_many(path, worker: int, count: int) -> None:
    cache = SqliteCache(path)
    for i in range(count):
        cache.put(f"{worker}-{i}", {"worker": worker, "i": i})


def test_several_processes_write_one_cache_without_losing_an_entry(tmp_path):
    path = tmp_path / "cache.sqlite"
    SqliteCache(path).put("seed", 0)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, w, 200)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    cache = SqliteCache(path)
    assert len(cache) == 601 and cache.get("2-199") == {"worker": 2, "i": 199}


def test_a_pickled_cache_opens_its_own_connection(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite")
    cache.put("k", "v")
    copy = pickle.loads(pickle.dumps(cache))
    copy.put("k2", "v2")
    assert copy.get("k") == "v" and cache.get("k2") == "v2"


def test_a_jsonl_cache_of_an_earlier_version_is_imported_once(tmp_path):
    legacy = tmp_path / "cache.jsonl"
    legacy.write_text(json.dumps({"key": "old", "value": {"answer": "paid for"}}) + "\n" + '{"key": "torn')
    cache = SqliteCache(tmp_path / "cache.sqlite")
    assert cache.get("old") == {"answer": "paid for"}  # an API answer paid for before the upgrade is kept
    assert (tmp_path / "cache.sqlite").exists() and len(cache) == 1


def test_without_a_path_the_cache_lives_in_memory():
    cache = SqliteCache(None)
    cache.put("k", 1)
    assert cache.get("k") == 1 and len(cache) == 1
