"""EmbeddingCache: bounded by entries and bytes, least recently used evicted, invalidated when a
task's image changes."""

import threading

import numpy as np
import pytest

from backend.interactive.cache import EmbeddingCache, content_hash


def test_a_value_comes_back_for_the_same_task_and_image_only():
    cache = EmbeddingCache(max_entries=4, max_bytes=1000)
    assert cache.put("p1:1", "h1", "sam", "features-1", 100)
    assert cache.get("p1:1", "h1", "sam") == "features-1"
    assert cache.get("p1:1", "h1", "clip") is None  # another value of the same image
    assert cache.get("p1:2", "h1", "sam") is None  # another task, same pixels: its own entry
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (1, 2, 1, 100)


def test_the_least_recently_used_entry_goes_first_when_entries_run_out():
    cache = EmbeddingCache(max_entries=2, max_bytes=10_000)
    cache.put("a", "ha", "sam", 1, 10)
    cache.put("b", "hb", "sam", 2, 10)
    assert cache.get("a", "ha", "sam") == 1  # a is now the most recently used
    cache.put("c", "hc", "sam", 3, 10)
    assert [key for key, _ in cache.keys()] == ["a", "c"]
    assert cache.get("b", "hb", "sam") is None
    assert cache.stats().evictions == 1
    assert len(cache) == 2


def test_bytes_bound_the_cache_and_evict_least_recently_used():
    cache = EmbeddingCache(max_entries=100, max_bytes=250)
    for index in range(3):
        cache.put(f"t{index}", f"h{index}", "sam", index, 100)
    assert [key for key, _ in cache.keys()] == ["t1", "t2"]
    assert cache.nbytes == 200 <= cache.max_bytes
    cache.put("t2", "h2", "clip", "prefix", 50)  # the same entry grows: still within bounds
    assert cache.nbytes == 250 and len(cache) == 2
    cache.put("t3", "h3", "sam", 3, 100)  # t1 (least recent) goes; t2 is 150 + t3 100 = 250
    assert [key for key, _ in cache.keys()] == ["t2", "t3"]
    assert cache.nbytes == 250
    assert cache.stats().evictions == 2


def test_a_value_larger_than_the_byte_bound_is_not_kept_and_evicts_nothing():
    cache = EmbeddingCache(max_entries=4, max_bytes=100)
    cache.put("a", "ha", "sam", 1, 60)
    assert not cache.put("b", "hb", "sam", 2, 101)
    assert cache.get("a", "ha", "sam") == 1 and cache.get("b", "hb", "sam") is None
    assert cache.stats().too_large == 1


def test_an_entry_whose_values_do_not_fit_together_keeps_what_fits():
    cache = EmbeddingCache(max_entries=4, max_bytes=100)
    cache.put("a", "ha", "sam", 1, 60)
    cache.put("b", "hb", "sam", 2, 60)  # evicts a
    assert not cache.put("b", "hb", "clip", "x", 50)  # 110 > 100 with b's own SAM features
    assert cache.get("b", "hb", "sam") == 2 and cache.get("b", "hb", "clip") is None
    assert cache.nbytes == 60


def test_a_new_image_for_the_same_task_invalidates_its_entry():
    cache = EmbeddingCache(max_entries=4, max_bytes=1000)
    cache.put("p1:7", "old", "sam", "old features", 100)
    cache.put("p1:7", "old", "clip", "old prefix", 10)
    assert cache.get("p1:7", "new", "sam") is None  # the image changed
    assert cache.stats().invalidations == 1
    assert cache.nbytes == 0 and len(cache) == 0
    assert cache.get("p1:7", "old", "sam") is None  # the old embedding is gone for good
    cache.put("p1:7", "new", "sam", "new features", 100)
    assert cache.keys() == [("p1:7", "new")]
    cache.put("p1:7", "newer", "sam", "newest", 100)  # storing for a changed image drops the old entry
    assert cache.keys() == [("p1:7", "newer")] and cache.nbytes == 100
    assert cache.stats().invalidations == 2


def test_replacing_a_value_counts_its_bytes_once():
    cache = EmbeddingCache(max_entries=2, max_bytes=1000)
    cache.put("a", "h", "sam", 1, 300)
    cache.put("a", "h", "sam", 2, 200)
    assert cache.nbytes == 200 and cache.get("a", "h", "sam") == 2


def test_invalidate_and_clear():
    cache = EmbeddingCache(max_entries=2, max_bytes=1000)
    cache.put("a", "h", "sam", 1, 300)
    assert cache.invalidate("a") and not cache.invalidate("a")
    cache.put("b", "h", "sam", 1, 300)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_zero_entries_keeps_nothing():
    cache = EmbeddingCache(max_entries=0, max_bytes=1000)
    assert not cache.put("a", "h", "sam", 1, 1)
    assert cache.get("a", "h", "sam") is None and cache.stats().too_large == 0


def test_bounds_must_not_be_negative():
    with pytest.raises(ValueError):
        EmbeddingCache(max_entries=-1, max_bytes=10)
    with pytest.raises(ValueError):
        EmbeddingCache(max_entries=1, max_bytes=10).put("a", "h", "sam", 1, -5)


def test_threads_never_break_the_bounds():
    cache = EmbeddingCache(max_entries=5, max_bytes=5 * 64)

    def work(worker: int) -> None:
        for index in range(200):
            key = f"t{(worker * 7 + index) % 13}"
            cache.put(key, f"h{index % 3}", "sam", index, 64)
            cache.get(key, f"h{index % 3}", "sam")
            assert len(cache) <= 5 and cache.nbytes <= 5 * 64

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) <= 5 and cache.nbytes == 64 * sum(1 for _ in cache.keys())


def test_content_hash_follows_pixels_shape_and_type():
    image = np.zeros((4, 6, 3), np.uint8)
    same = image.copy()
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert content_hash(image) == content_hash(same)
    assert content_hash(image) != content_hash(changed)
    assert content_hash(image) != content_hash(image.reshape(6, 4, 3))
    assert content_hash(image[:, ::2]) == content_hash(np.ascontiguousarray(image[:, ::2]))
