"""The Batch API (issue 27 item 5) through the ``openai`` SDK against a real gateway in front of the sim: upload,
create, run, output; every line through the owner's pipeline (scopes, usage tagged with the batch id); cancel,
another identity's 404, and the refusals of bad input in OpenAI's error shape with nothing half-written."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import Gateway, Sim, start_gateway  # noqa: E402

MODELS = [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"},
          {"name": "sim-other", "upstream": "sim"}, {"name": "sim-cap", "upstream": "sim", "upstream_model": "sim-small",
                                                            "capacity": {"concurrency": 1}}]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("batches")
    sim = Sim(tmp)
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=MODELS,
        identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small", "sim-embed", "sim-cap"]},
                    {"name": "other", "owner": "b@example.com", "models": ["sim-small", "sim-embed"]},
                    {"name": "leaver", "owner": "c@example.com", "models": ["sim-small"]},
                    {"name": "gone", "owner": "d@example.com", "models": ["sim-small"]}],
        extra={"batches": {"file_retention_days": 2, "purge_interval": 0.3}})
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway, who: str = "app") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=60.0)


def chat_line(i: int, model: str = "sim-small", **extra) -> dict:
    return {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 5, **extra}}


def embed_line(i: int) -> dict:
    return {"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "sim-embed", "input": f"text {i}"}}


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def wait_done(c: openai.OpenAI, batch_id: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, f"batch still {b.status}: {b.request_counts}"
        time.sleep(0.3)


def outputs(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines() if x.strip()]


def run_batch(c: openai.OpenAI, lines: list[dict], endpoint: str = "/v1/chat/completions"):
    f = c.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    return f, b


def running(c: openai.OpenAI, lines: list[dict], answered: int, timeout: float = 30.0):
    """A batch of ``lines`` started and under way: at least ``answered`` of them done (a slow sim keeps the rest)."""
    _, b = run_batch(c, lines)
    deadline = time.monotonic() + timeout
    while c.batches.retrieve(b.id).request_counts.completed < answered:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return b


def test_chat_lines_run_through_the_whole_flow_and_each_is_answered_once(rig) -> None:
    g, _ = rig
    c = client(g)
    since = time.time()
    f, b = run_batch(c, [chat_line(i) for i in range(100)])
    assert f.purpose == "batch" and f.bytes > 0 and c.files.retrieve(f.id).id == f.id
    assert b.status in ("validating", "in_progress") and b.input_file_id == f.id
    done = wait_done(c, b.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 100 and done.request_counts.completed == 100 and done.request_counts.failed == 0
    assert done.error_file_id is None and done.completed_at and done.in_progress_at
    out = outputs(c, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"chat-{i}" for i in range(100))
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["response"]["body"]["object"] == "chat.completion"
        assert o["response"]["body"]["usage"]["completion_tokens"] == 5
        assert o["response"]["request_id"].startswith(b.id)
    # one usage row per line, tagged with the batch id (its request id), charged what the answer says
    rows = []
    deadline = time.monotonic() + 15
    while len(rows) < 100 and time.monotonic() < deadline:
        rows = [r for r in g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"]
                if r["request_id"].startswith(b.id)]
        time.sleep(0.2)
    assert len(rows) == 100 and len({r["request_id"] for r in rows}) == 100
    assert {r["request_id"] for r in rows} == {o["response"]["request_id"] for o in out}
    assert all(r["completion_tokens"] == 5 and r["status"] == 200 for r in rows)


def test_embeddings_lines_run_and_a_line_past_its_model_fails_alone(rig) -> None:
    g, _ = rig
    c = client(g)
    lines = [embed_line(i) for i in range(20)]
    lines[7]["body"]["input"] = ""  # the sim refuses an empty input: that line fails, the others do not
    _, b = run_batch(c, lines, "/v1/embeddings")
    done = wait_done(c, b.id)
    assert done.status == "completed"
    out, err = outputs(c, done.output_file_id), outputs(c, done.error_file_id)
    assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)
    assert {o["custom_id"] for o in out} | {e["custom_id"] for e in err} == {f"emb-{i}" for i in range(20)}
    assert all(o["response"]["body"]["data"][0]["object"] == "embedding" for o in out)


def test_another_identitys_files_and_batches_are_404_as_unknown_ones(rig) -> None:
    g, _ = rig
    mine, theirs = client(g), client(g, "other")
    f, b = run_batch(mine, [chat_line(i) for i in range(3)])
    wait_done(mine, b.id)
    for call in (lambda: theirs.files.retrieve(f.id), lambda: theirs.files.content(f.id),
                 lambda: theirs.files.delete(f.id), lambda: theirs.batches.retrieve(b.id),
                 lambda: theirs.batches.cancel(b.id), lambda: mine.batches.retrieve("batch_unknown"),
                 lambda: mine.files.retrieve("file-unknown"), lambda: mine.files.content("file-unknown"),
                 lambda: theirs.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.status_code == 404 and exc.value.body["code"] == "not_found"  # type: ignore[index]
    assert b.id not in [x.id for x in theirs.batches.list()] and f.id not in [x.id for x in theirs.files.list()]
    assert b.id in [x.id for x in mine.batches.list()] and f.id in [x.id for x in mine.files.list()]
    # their output file is theirs alone too
    done = mine.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(done.output_file_id)  # type: ignore[arg-type]
    assert mine.files.delete(f.id).deleted and f.id not in [x.id for x in mine.files.list()]


def test_lines_a_batch_may_not_run_fail_it_at_validation_with_an_error_file_naming_them(rig) -> None:
    g, sim = rig
    c = client(g)
    before = sim.stats()
    lines = [chat_line(0), chat_line(0), {**chat_line(2), "url": "/v1/embeddings"}, chat_line(3, stream=True),
             chat_line(4, model="sim-other"), chat_line(5)]
    _, b = run_batch(c, lines)
    assert b.status == "failed" and b.request_counts.total == 0 and b.failed_at
    assert [(e.line, e.code) for e in b.errors.data] == [  # type: ignore[union-attr]
        (2, "duplicate_custom_id"), (3, "invalid_url"), (4, "invalid_stream"), (5, "model_not_found")]
    err = outputs(c, b.error_file_id)
    assert [e["line"] for e in err] == [2, 3, 4, 5] and err[3]["error"]["param"] == "body.model"
    assert c.batches.retrieve(b.id).status == "failed"
    time.sleep(1.5)
    assert sim.stats() == before  # nothing ran


def test_cancel_stops_new_lines_and_keeps_what_was_answered(rig) -> None:
    g, sim = rig
    c = client(g)
    sim.faults(delay_ms=150)
    try:
        b = running(c, [chat_line(i) for i in range(80)], 8)
        cancelling = c.batches.cancel(b.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        at_cancel = cancelling.request_counts.completed
        done = wait_done(c, b.id)
    finally:
        sim.clear_faults()
    assert done.status == "cancelled" and done.cancelled_at
    # the lines in flight when it was cancelled finish (at most the runner's concurrency, 8); no new one starts
    assert at_cancel <= done.request_counts.completed <= at_cancel + 8 < 80
    out = outputs(c, done.output_file_id)
    assert len(out) == done.request_counts.completed and len({o["custom_id"] for o in out}) == len(out)
    time.sleep(1.0)
    assert c.batches.retrieve(b.id).request_counts.completed == done.request_counts.completed


def _files(g: Gateway) -> int:
    return sqlite3.connect(g.tmp / "sluice.db").execute("SELECT count(*) FROM batch_files").fetchone()[0]


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "type" in err


def test_bad_uploads_are_clear_4xx_and_leave_nothing(rig) -> None:
    g, _ = rig
    c = client(g)
    n = _files(g)
    key = {"Authorization": f"Bearer {g.keys['app']}"}
    good = jsonl([chat_line(1)])
    with pytest.raises(openai.BadRequestError) as exc:
        c.files.create(file=("in.jsonl", io.BytesIO(good + b'{"custom_id": "x", \n')), purpose="batch")
    assert exc.value.body["code"] == "invalid_jsonl" and "Line 2" in exc.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        c.files.create(file=("in.jsonl", io.BytesIO(good)), purpose="fine-tune")
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    big = json.dumps({**chat_line(2), "pad": "x" * (10 * 1024 * 1024)}).encode()
    _refused(httpx.post(g.v1 + "/files", headers=key, files={"file": ("in.jsonl", good * 5000 + big + b"\n")},
                        data={"purpose": "batch"}, timeout=60), 400, "line_too_large")
    assert _unfinished_chunks(g) == 0  # the chunks written before the long line went with it
    _refused(httpx.post(g.v1 + "/files", headers=key, content=good, timeout=10), 415, "unsupported_media_type")
    _refused(httpx.post(g.v1 + "/files", headers=key, files={"file": ("in.jsonl", b"\n\n")}, data={"purpose": "batch"},
                        timeout=10), 400, "invalid_file")
    assert _files(g) == n
    # 300 MB declared: refused from the headers, before the body is read; 100 MB with an unknown key: 401 likewise
    for auth, size, status in ((key["Authorization"], 300, 413), ("Bearer sk-nothing", 100, 401)):
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
            s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                      f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {size * 1024 * 1024}\r\n\r\n".encode()
                      + b"x" * 65536)
            head = s.recv(65536).decode("latin-1")
        assert head.startswith(f"HTTP/1.1 {status}"), head[:200]
    assert _files(g) == n
    # the largest body a model call takes is still the listener's own
    r = httpx.post(g.v1 + "/chat/completions", headers=key, content=b"x" * (5 * 1024 * 1024), timeout=30)
    assert r.status_code == 413


def test_batch_lines_yield_to_the_owners_interactive_calls_at_a_models_capacity(rig) -> None:
    g, sim = rig
    c = client(g)
    sim.faults(delay_ms=300)
    try:  # one call at a time to sim-cap: the batch's other lines wait in the fair queue, behind interactive ones
        b = running(c, [chat_line(i, model="sim-cap") for i in range(12)], 1)
        t0 = time.monotonic()
        c.chat.completions.create(model="sim-cap", messages=[{"role": "user", "content": "now"}], max_tokens=2)
        took = time.monotonic() - t0
        pending = 12 - c.batches.retrieve(b.id).request_counts.completed
        done = wait_done(c, b.id)
    finally:
        sim.clear_faults()
    # at most the line in flight, then its own call (0.6 s); behind the batch's queued lines it would be >= 2.1 s
    assert took < 1.2 and pending >= 3, (took, pending)
    assert done.status == "completed" and done.request_counts.completed == 12


def test_a_batch_past_its_window_expires_with_its_unrun_lines_in_the_error_file(rig) -> None:
    g, sim = rig
    c = client(g)
    sim.faults(delay_ms=150)
    try:
        b = running(c, [chat_line(i) for i in range(60)], 4)
        with sqlite3.connect(g.tmp / "sluice.db", timeout=30) as db:  # its 24 h are up (as the runner reads them)
            db.execute("UPDATE batches SET expires_at = ? WHERE id = ?", (time.time() - 1, b.id))
        done = wait_done(c, b.id)
    finally:
        sim.clear_faults()
    assert done.status == "expired" and done.expired_at
    out, err = outputs(c, done.output_file_id), outputs(c, done.error_file_id)
    expired = [e for e in err if e["error"] and e["error"]["code"] == "batch_expired"]
    assert expired and len(out) + len(err) == 60 and done.request_counts.failed == len(err)
    assert {o["custom_id"] for o in out} | {e["custom_id"] for e in err} == {f"chat-{i}" for i in range(60)}


def test_a_chunked_upload_past_200_mb_is_refused_as_it_streams_and_leaves_nothing(rig) -> None:
    g, _ = rig
    n = _files(g)
    # valid JSONL all the way (8 KiB lines, 1 MiB chunks): written to the store as it comes, until the limit
    line = json.dumps({**chat_line(0), "pad": ""}).encode()
    line = line[:-2] + b"z" * (8191 - len(line)) + b'"}\n'
    piece = b"%x\r\n%s\r\n" % (1024 * 1024, line * 128)
    head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\n"
            b"Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n")
    sent = 0
    with socket.create_connection(("127.0.0.1", g.port), timeout=30) as s:
        s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.keys['app']}\r\n"
                  "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                  + b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < 300 * 1024 * 1024:
                s.sendall(piece)
                sent += 1024 * 1024
        except (BrokenPipeError, ConnectionResetError):
            pass
        head = s.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert sent < 260 * 1024 * 1024  # cut off soon after the limit, not read to the end
    assert _files(g) == n and _unfinished_chunks(g) == 0  # the 200 MB of chunks it wrote went with it


def test_disabling_the_owner_cancels_its_unfinished_batch(rig) -> None:
    g, sim = rig
    c = client(g, "leaver")
    sim.faults(delay_ms=150)
    try:
        b = running(c, [chat_line(i) for i in range(60)], 4)
        ident = next(i for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "leaver")
        assert g.admin("DELETE", f"/admin/identities/{ident['id']}").status_code == 200
        with sqlite3.connect(g.tmp / "sluice.db", timeout=30) as db:
            deadline = time.monotonic() + 30
            while (row := db.execute("SELECT status, completed, failed FROM batches WHERE id = ?",
                                     (b.id,)).fetchone())[0] != "cancelled":
                assert time.monotonic() < deadline, row
                time.sleep(0.1)
    finally:
        sim.clear_faults()
    assert row[1] + row[2] < 60  # the lines not started never ran


def test_the_batch_object_carries_the_summed_usage_of_its_lines_through_the_sdk(rig) -> None:
    g, _ = rig
    c = client(g)
    _, b = run_batch(c, [chat_line(i) for i in range(12)])
    assert b.usage is not None and b.usage.total_tokens == 0  # nothing answered yet
    done = wait_done(c, b.id)
    out = outputs(c, done.output_file_id)
    bodies = [o["response"]["body"]["usage"] for o in out]
    want_in, want_out = sum(u["prompt_tokens"] for u in bodies), sum(u["completion_tokens"] for u in bodies)
    want_cached = sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in bodies)
    want_reasoning = sum((u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) for u in bodies)
    for seen in (done, c.batches.retrieve(b.id), next(x for x in c.batches.list() if x.id == b.id)):
        u = seen.usage
        assert u is not None and want_in > 0 and want_out == 12 * 5
        assert (u.input_tokens, u.output_tokens, u.total_tokens) == (want_in, want_out, want_in + want_out)
        assert u.input_tokens_details.cached_tokens == want_cached
        assert u.output_tokens_details.reasoning_tokens == want_reasoning


def _db(g: Gateway, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(g.tmp / "sluice.db", timeout=30) as db:
        return db.execute(sql, args).fetchall()


def _unfinished_chunks(g: Gateway) -> int:
    return _db(g, "SELECT count(*) FROM batch_file_chunks WHERE file_id NOT IN (SELECT id FROM batch_files)")[0][0]


def test_an_upload_is_written_to_the_store_as_it_arrives_and_a_cut_one_leaves_nothing(rig) -> None:
    g, _ = rig
    n = _files(g)
    head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\n"
            b"Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n")
    line = json.dumps({**chat_line(0), "pad": "y" * 1000}).encode() + b"\n"
    with socket.create_connection(("127.0.0.1", g.port), timeout=30) as s:
        s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.keys['app']}\r\n"
                  f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
                  + head)
        for _ in range(12 * 1024):  # 12 MB of the declared 100: the chunks written so far are in the store
            s.sendall(line)
        deadline = time.monotonic() + 20
        while _unfinished_chunks(g) < 8:
            assert time.monotonic() < deadline, "the upload's chunks did not reach the store while it arrived"
            time.sleep(0.05)
        assert _files(g) == n  # no file yet: its row comes last
    deadline = time.monotonic() + 20  # the client left mid-upload: what it wrote goes
    while _unfinished_chunks(g):
        assert time.monotonic() < deadline, "a cut upload left its chunks"
        time.sleep(0.05)
    assert _files(g) == n


def test_files_expire_as_expires_after_says_and_output_files_after_the_configured_retention(rig) -> None:
    g, _ = rig
    c = client(g)
    f = c.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch",
                       expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600 and c.files.retrieve(f.id).expires_at == f.expires_at
    for bad in ({"anchor": "last_active_at", "seconds": 3600}, {"anchor": "created_at", "seconds": 60}):
        with pytest.raises(openai.BadRequestError) as exc:
            c.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch",
                           expires_after=bad)  # type: ignore[arg-type]
        assert exc.value.body["param"].startswith("expires_after")  # type: ignore[index]
    plain = c.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    assert plain.expires_at == plain.created_at + 2 * 86400  # batches.file_retention_days, as OpenAI's 30 days
    _, b = run_batch(c, [chat_line(i) for i in range(3)])
    done = wait_done(c, b.id)
    out = c.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert out.expires_at is not None and abs(out.expires_at - (done.completed_at + 2 * 86400)) <= 1  # type: ignore[operator]
    # past its expiry a file is a missing one at once, and the purge (one replica, under a lease) deletes it
    _db(g, "UPDATE batch_files SET expires_at = ? WHERE id IN (?, ?)", time.time() - 1, f.id, out.id)
    for gone in (f.id, out.id):
        with pytest.raises(openai.NotFoundError):
            c.files.retrieve(gone)
        with pytest.raises(openai.NotFoundError):
            c.files.content(gone)
        assert gone not in [x.id for x in c.files.list()]
    deadline = time.monotonic() + 20
    while _db(g, "SELECT count(*) FROM batch_file_chunks WHERE file_id IN (?, ?)", f.id, out.id)[0][0] or _db(
            g, "SELECT count(*) FROM batch_files WHERE id IN (?, ?)", f.id, out.id)[0][0]:
        assert time.monotonic() < deadline, "expired files were not purged"
        time.sleep(0.1)
    assert c.files.retrieve(plain.id).id == plain.id  # the others stay


def test_offboarding_an_owner_deletes_its_identities_files_and_batches(rig) -> None:
    g, _ = rig
    c = client(g, "gone")
    f, b = run_batch(c, [chat_line(i) for i in range(3)])
    done = wait_done(c, b.id)
    kept = client(g).files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    ident = next(i for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "gone")
    assert _db(g, "SELECT count(*) FROM batch_files WHERE identity_id = ?", ident["id"])[0][0] == 2  # input, output
    assert g.admin("POST", "/admin/owners/d@example.com/offboard", json={}).status_code == 200
    deadline = time.monotonic() + 20
    while _db(g, "SELECT count(*) FROM batch_files WHERE identity_id = ?", ident["id"])[0][0]:
        assert time.monotonic() < deadline, "the offboarded identity's files stayed"
        time.sleep(0.1)
    assert not _db(g, "SELECT count(*) FROM batch_file_chunks WHERE file_id IN (?, ?)", f.id,
                   done.output_file_id)[0][0]
    assert not _db(g, "SELECT count(*) FROM batches WHERE identity_id = ?", ident["id"])[0][0]
    assert not _db(g, "SELECT count(*) FROM batch_lines WHERE batch_id = ?", b.id)[0][0]
    assert client(g).files.retrieve(kept.id).id == kept.id  # another owner's stay
