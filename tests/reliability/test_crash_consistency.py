"""Webhook crash consistency: what was acknowledged is on disk, whole, once.

(a) 200 webhook posts through the app while ``write``, ``fsync`` and ``link`` of the annotation
    store fail at random with ENOSPC or EIO (a failed write sometimes lands half its bytes
    first); the sender redelivers every post until it is acknowledged, then the store restarts.
(b) 200 posts handled by a child process that is SIGKILLed 20 times at random moments; each
    restart recovers the store and the sender redelivers what was not acknowledged.

Figures for both: acknowledged-but-missing, duplicates after redelivery, orphan partial files
after restart (all must be 0), and what was injected or interrupted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

from backend.service import annotation_store as store_module
from backend.service.annotation_store import AnnotationStore

from ._webhook_child import serve
from .conftest import ScopedOs, write_figures

POSTS = 200
KILLS = 20
LABEL_CONFIG = "<View><Image name='image' value='$image'/><BrushLabels name='segment' toName='image'/></View>"


def make_posts(count: int, rng: random.Random) -> list[dict]:
    """Label Studio-shaped events: new annotations, new versions of earlier ones, bulk creates;
    brush RLEs of 500-20k values (2-80 KB) so that writes take a while."""
    posts, next_id, known = [], 1, []

    def annotation(annotation_id, index, part=0):
        rle = [rng.randrange(256) for _ in range(rng.randint(500, 20_000))]
        return {
            "id": annotation_id,
            "task": annotation_id,
            "project": 1,
            "updated_at": f"2026-12-01T00:00:{index:04d}.{part}Z",
            "result": [
                {
                    "id": "r1",
                    "type": "brushlabels",
                    "from_name": "segment",
                    "to_name": "image",
                    "value": {"format": "rle", "rle": rle, "brushlabels": ["segment"]},
                }
            ],
        }

    for index in range(count):
        roll = rng.random()
        project = {"id": 1, "label_config": LABEL_CONFIG}
        if roll < 0.25 and known:
            body = {
                "action": "ANNOTATION_UPDATED",
                "annotation": annotation(rng.choice(known), index),
                "project": project,
            }
        elif roll < 0.45:
            ids = list(range(next_id, next_id + rng.randint(2, 3)))
            next_id += len(ids)
            known += ids
            body = {
                "action": "ANNOTATIONS_CREATED",
                "project": project,
                "annotation": [annotation(i, index, part) for part, i in enumerate(ids)],
            }
        else:
            known.append(next_id)
            body = {"action": "ANNOTATION_CREATED", "annotation": annotation(next_id, index), "project": project}
            next_id += 1
        posts.append(body)
    return posts


def versions_of(body: dict) -> list[tuple[int, str]]:
    items = body["annotation"] if isinstance(body["annotation"], list) else [body["annotation"]]
    return [(item["id"], item["updated_at"]) for item in items]


def digest(annotation: dict) -> str:
    return hashlib.sha256(json.dumps(annotation["result"], sort_keys=True).encode()).hexdigest()


def audit(root: Path, posts: list[dict], acknowledged: set[int], seen: dict | None = None) -> dict:
    """What is on disk against what was acknowledged (``seen``: files already read, which never
    change once named)."""
    seen = {} if seen is None else seen
    sent = {}
    for body in posts:
        items = body["annotation"] if isinstance(body["annotation"], list) else [body["annotation"]]
        for item in items:
            sent[(item["id"], item["updated_at"])] = digest(item)
    found, corrupt = Counter(), 0
    contents = {}
    for path in root.rglob("v-*.json"):
        if path not in seen:
            try:
                record = json.loads(path.read_text("utf-8"))
            except ValueError:
                corrupt += 1  # a torn file under a final name: must never happen
                continue
            seen[path] = ((record["annotation_id"], record["updated_at"]), digest(record["annotation"]))
        key, content = seen[path]
        found[key] += 1
        contents[key] = content
    acked_versions = {v for index in acknowledged for v in versions_of(posts[index])}
    return {
        "acknowledged_versions": len(acked_versions),
        "acknowledged_but_missing": sum(1 for v in acked_versions if v not in found or contents[v] != sent[v]),
        "duplicates": sum(n - 1 for n in found.values()),
        "corrupt_visible_files": corrupt,
        "stored_but_never_sent": sum(1 for v in found if v not in sent),
        "partial_files": len(list(root.rglob("*.partial"))),
    }


# ---- (a) ENOSPC / EIO at write, fsync and link ------------------------------------------------


class FaultInjector:
    """Wraps ``write``, ``fsync`` and ``link`` of the store's ``os``; fails each call with the given
    probability, with ENOSPC or EIO; a failing write sometimes writes half its bytes first."""

    def __init__(self, rng: random.Random, probability: float) -> None:
        self.rng = rng
        self.probability = probability
        self.injected: Counter = Counter()
        self.calls: Counter = Counter()

    def scoped_os(self) -> ScopedOs:
        return ScopedOs(os, **{name: self._wrap(name, getattr(os, name)) for name in ("write", "fsync", "link")})

    def _wrap(self, name, real):
        def call(*args):
            self.calls[name] += 1
            if self.rng.random() < self.probability:
                code = self.rng.choice([errno.ENOSPC, errno.EIO])
                self.injected[f"{name} {errno.errorcode[code]}"] += 1
                if name == "write" and self.rng.random() < 0.5:
                    fd, data = args
                    real(fd, bytes(data[: len(data) // 2]))  # a short write, then the error
                raise OSError(code, f"{os.strerror(code)} (injected)")
            return real(*args)

        return call


def test_webhooks_under_injected_disk_errors(make_app, monkeypatch, config):
    rng = random.Random(20261201)
    posts = make_posts(POSTS, rng)
    app = make_app()
    client = app.test_client()
    root = config.model_dir / "annotations"
    faults = FaultInjector(random.Random(7), probability=0.08)
    monkeypatch.setattr(store_module, "os", faults.scoped_os())
    statuses, messages = Counter(), Counter()
    acknowledged: set[int] = set()
    replies, max_partials_after_failure, attempts_max = Counter(), 0, 0
    started = time.perf_counter()
    for index, body in enumerate(posts):
        for attempt in range(1, 51):
            response = client.post("/webhook", json=body)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                acknowledged.add(index)
                for item in response.json["annotations"]:
                    replies[item["status"]] += 1
                attempts_max = max(attempts_max, attempt)
                break
            assert response.status_code == 503, response.get_data(as_text=True)
            error = response.json["error"]
            messages[
                "disk full" if "(disk full, ENOSPC)" in error else "I/O error" if "(I/O error, EIO)" in error else error
            ] += 1
            max_partials_after_failure = max(max_partials_after_failure, len(list(root.rglob("*.partial"))))
        else:
            raise AssertionError(f"post {index} never acknowledged")
    seconds = time.perf_counter() - started
    monkeypatch.undo()
    before_restart = audit(root, posts, acknowledged)
    removed_at_restart = AnnotationStore(root).recover()  # what create_app does at start-up
    after_restart = audit(root, posts, acknowledged)
    figures = {
        "posts": POSTS,
        "versions_sent": sum(len(versions_of(b)) for b in posts),
        "fault_probability_per_call": faults.probability,
        "calls": dict(faults.calls),
        "faults_injected": dict(sorted(faults.injected.items())),
        "responses": {str(k): v for k, v in sorted(statuses.items())},
        "status_500": statuses.get(500, 0),
        "error_messages_503": dict(messages),
        "most_deliveries_of_one_post": attempts_max,
        "item_replies_when_acknowledged": dict(replies),
        "partial_files_after_a_failure_max": max_partials_after_failure,
        "partial_files_removed_at_restart": removed_at_restart,
        "seconds": round(seconds, 1),
        **after_restart,
        "partial_files_after_restart": after_restart.pop("partial_files"),
    }
    figures.pop("partial_files", None)
    write_figures("webhook-faults", figures)
    assert len(acknowledged) == POSTS and statuses.get(500, 0) == 0
    assert set(messages) <= {"disk full", "I/O error"}
    assert sum(faults.injected.values()) > 20 and all(
        faults.injected[f"{n} {c}"] for n in ("write", "fsync", "link") for c in ("ENOSPC", "EIO")
    )
    assert before_restart["partial_files"] == 0 and max_partials_after_failure == 0
    assert figures["acknowledged_but_missing"] == 0 and figures["duplicates"] == 0
    assert figures["corrupt_visible_files"] == 0 and figures["stored_but_never_sent"] == 0
    assert figures["partial_files_after_restart"] == 0


# ---- (b) SIGKILL of the writing process ---------------------------------------------------------


def test_webhooks_survive_sigkill_at_random_moments(tmp_path):
    rng = random.Random(20261202)
    posts = make_posts(POSTS, rng)
    root = tmp_path / "annotations"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.reliability._webhook_child"])
    acknowledged: set[int] = set()
    replies = Counter()
    kill_records, recovered_at_start, corrupt_after_kill, missed_kills = [], [], 0, 0
    seen: dict = {}
    post_seconds = 0.01
    deadline = time.monotonic() + 240
    runs = 0
    while len(acknowledged) < POSTS:
        assert time.monotonic() < deadline, "the SIGKILL test ran out of time"
        runs += 1
        pending = [(index, posts[index]) for index in range(POSTS) if index not in acknowledged]
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=serve, args=(str(root), pending, sender), daemon=True)
        child.start()
        sender.close()
        assert receiver.poll(60), "the child did not start"
        kind, removed = receiver.recv()
        assert kind == "ready"
        recovered_at_start.append(removed)
        kills_left = KILLS - len(kill_records)
        # spread the kills over what is left, always with posts still to come after the kill
        acks_before_kill = rng.randint(0, max(0, 2 * len(pending) // (kills_left + 1) - 1)) if kills_left else None
        kill = kills_left > 0 and len(pending) > acks_before_kill + 1
        acks_this_run, last_ack, intervals = 0, time.perf_counter(), []

        def take(message):
            nonlocal acks_this_run, last_ack
            if message[0] != "ack":
                return False
            _, index, reply = message
            acknowledged.add(index)
            for item in reply["annotations"]:
                replies[item["status"]] += 1
            acks_this_run += 1
            now = time.perf_counter()
            intervals.append(now - last_ack)
            last_ack = now
            return True

        for _ in pending:  # the child works through them in order, acknowledging each
            if kill and acks_this_run >= acks_before_kill:
                break
            if not receiver.poll(60):
                raise AssertionError("the child stopped answering")
            message = receiver.recv()
            if message[0] == "done":
                break
            take(message)
        if kill:
            if intervals:
                post_seconds = sum(intervals) / len(intervals)
            time.sleep(rng.uniform(0, 1.5 * post_seconds))  # land anywhere in the next post
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished everything first: not a kill
                pass
            child.join(30)
            if child.exitcode != -signal.SIGKILL:
                missed_kills += 1
            try:  # acknowledgements already sent before the kill still count
                while receiver.poll(0):
                    take(receiver.recv())
            except (EOFError, OSError):
                pass
            after_kill = audit(root, posts, acknowledged, seen)
            corrupt_after_kill += after_kill["corrupt_visible_files"]
            assert after_kill["acknowledged_but_missing"] == 0 and after_kill["corrupt_visible_files"] == 0
            if child.exitcode == -signal.SIGKILL:
                kill_records.append({"after_acks": acks_this_run, "partial_files_left": after_kill["partial_files"]})
        else:
            child.join(60)
            assert child.exitcode == 0
        receiver.close()
    removed_at_restart = AnnotationStore(root).recover()
    final = audit(root, posts, acknowledged, seen)
    figures = {
        "posts": POSTS,
        "versions_sent": sum(len(versions_of(b)) for b in posts),
        "kills": len(kill_records),
        "child_runs": runs,
        "kills_missed_child_had_finished": missed_kills,
        "kills_that_left_a_partial_file": sum(1 for k in kill_records if k["partial_files_left"]),
        "partial_files_left_by_kills": sum(k["partial_files_left"] for k in kill_records),
        "partial_files_removed_by_startup_recovery": sum(recovered_at_start),
        "partial_files_removed_at_final_restart": removed_at_restart,
        "item_replies_when_acknowledged": dict(replies),
        "mean_seconds_per_post": round(post_seconds, 4),
        "corrupt_visible_files_after_kills": corrupt_after_kill,
        **final,
        "partial_files_after_restart": final.pop("partial_files"),
    }
    figures.pop("partial_files", None)
    write_figures("sigkill", figures)
    assert len(kill_records) == KILLS and len(acknowledged) == POSTS
    assert figures["acknowledged_but_missing"] == 0 and figures["duplicates"] == 0
    assert figures["corrupt_visible_files"] == 0 and figures["stored_but_never_sent"] == 0
    assert figures["partial_files_after_restart"] == 0
