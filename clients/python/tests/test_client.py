import asyncio
import json
import threading

import numpy as np
import pytest

import inferq
from inferq import decode_response
from conftest import OPS, TEAM

FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture
def client(server):
    return inferq.Client(server, token=OPS)


def test_run_numpy_in_and_out(client):
    out = client.run("iris", {"x": FLOWERS})
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [0, 2]
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), [1, 1], rtol=1e-5)
    # The same as the JSON path: the V2 synchronous call.
    np.testing.assert_allclose(client.infer("iris", {"x": FLOWERS})["probabilities"], out["probabilities"])


def test_every_datatype_round_trips(client):
    inputs = {
        "in_BOOL": np.array([[True, False], [False, True]]),
        "in_UINT8": np.array([[0, 255], [7, 8]], dtype=np.uint8),
        "in_UINT16": np.array([[0, 65535], [7, 8]], dtype=np.uint16),
        "in_UINT32": np.array([[0, 2**32 - 1], [7, 8]], dtype=np.uint32),
        "in_UINT64": np.array([[0, 2**64 - 1], [7, 8]], dtype=np.uint64),
        "in_INT8": np.array([[-128, 127], [7, 8]], dtype=np.int8),
        "in_INT16": np.array([[-32768, 32767], [7, 8]], dtype=np.int16),
        "in_INT32": np.array([[-2**31, 2**31 - 1], [7, 8]], dtype=np.int32),
        "in_INT64": np.array([[-2**63, 2**63 - 1], [7, 8]], dtype=np.int64),
        "in_FP16": np.array([[0.5, -2.0], [np.inf, 65504]], dtype=np.float16),
        "in_FP32": np.array([[1.5, np.nan], [-np.inf, 3.25]], dtype=np.float32),
        "in_FP64": np.array([[1e300, -1e-300], [0.1, 2.0]], dtype=np.float64),
        "in_BYTES": np.array([["a", "héllo"], ["", "z" * 40]], dtype=object),
    }
    rec = client.wait(client.submit("identities", inputs)["id"])
    out = client.result(rec["id"])  # binary outputs
    # The same result asked for as JSON only: converted by the server.
    as_json = decode_response(client._json("GET", f"/v1/jobs/{rec['id']}/result"))
    for outputs in (out, as_json):
        for name, a in inputs.items():
            got = outputs["out_" + name[3:]]
            assert got.shape == a.shape, name
            if name == "in_BYTES":
                assert got.tolist() == [[e.encode() for e in row] for row in a.tolist()]
            else:
                assert got.dtype == a.dtype, name
                np.testing.assert_array_equal(got, a, err_msg=name)


def test_wait_poll_cancel_and_records(client):
    job = client.submit("iris", {"x": FLOWERS[:1]}, idempotency_key="py-key-1")
    assert job["status"] in ("queued", "running", "succeeded")
    again = client.submit("iris", {"x": FLOWERS[:1]}, idempotency_key="py-key-1")
    assert again["id"] == job["id"]
    with pytest.raises(inferq.Unprocessable, match="different request"):
        client.submit("iris", {"x": FLOWERS}, idempotency_key="py-key-1")
    rec = client.wait(job["id"], timeout=30)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1
    with pytest.raises(inferq.Conflict):
        client.cancel(job["id"])


def test_errors_carry_the_server_message(server, client):
    with pytest.raises(inferq.BadRequest, match="dimension 1 must be 4"):
        client.submit("iris", {"x": np.zeros((1, 3), dtype=np.float32)})
    with pytest.raises(inferq.NotFound):
        client.submit("nosuchmodel", {"x": FLOWERS})
    with pytest.raises(inferq.Unauthorized, match="Bearer"):
        inferq.Client(server, token="").models()
    with pytest.raises(inferq.Forbidden, match="may not use model identities"):
        inferq.Client(server, token=TEAM).submit("identities", {"in_BOOL": np.array([[True, False]])})
    with pytest.raises(inferq.NotFound):
        client.job("01M8937HDB0W20B2CWDSR9VKD8")
    with pytest.raises(inferq.Unavailable, match="cannot reach"):
        inferq.Client("http://127.0.0.1:9", token=OPS, timeout=2).models()


def test_stream_resumes_from_the_last_event(client):
    events = []
    got = threading.Event()

    def follow():
        for rec in client.stream("iris", from_start=True):
            events.append(rec)
            if len(events) >= 3:
                got.set()
                return

    ids = [client.submit("iris", {"x": FLOWERS[i % 2:i % 2 + 1]})["id"] for i in range(3)]
    for i in ids:
        client.wait(i, timeout=30)
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert got.wait(30), f"only {len(events)} results streamed"
    assert all(e["status"] in inferq.FINAL and e["event_id"] for e in events)
    # Resuming after the second event gives the third again, and nothing before.
    resumed = next(iter(client.stream("iris", last_event_id=events[1]["event_id"])))
    assert resumed["id"] == events[2]["id"]
    out = inferq.decode_response(events[0]["response"])
    assert set(out) == {"probabilities", "label"}


def test_batch_with_progress(client):
    lines = [{"custom_id": f"row-{i}", "inputs": {"x": FLOWERS[i % 2:i % 2 + 1]}} for i in range(50)]
    lines.append({"custom_id": "bad", "inputs": {"x": np.zeros((1, 3), dtype=np.float32)}})
    seen = []
    out = client.batch("iris", lines, progress=seen.append, poll=0.05)
    assert seen[-1]["status"] == "succeeded" and seen[-1]["counts"] == {"total": 51, "succeeded": 50, "failed": 1}
    assert [o["custom_id"] for o in out] == [f"row-{i}" for i in range(50)] + ["bad"]
    assert inferq.decode_response(out[1]["response"])["label"].tolist() == [2]
    assert "dimension 1 must be 4" in out[50]["error"]


def test_async_client(server):
    async def main():
        c = inferq.AsyncClient(server, token=OPS)
        outs = await asyncio.gather(*[c.run("iris", {"x": FLOWERS}) for _ in range(4)])
        return [o["label"].tolist() for o in outs]

    assert asyncio.run(main()) == [[0, 2]] * 4


@pytest.mark.parametrize("stream,want", [
    ([b"id: 1\n", b"event: result\n", b"data: {}\n", b"\n"], [{"id": "1", "event": "result", "data": "{}"}]),
    ([b"data: a\n", b"data: b\n", b"data:\n", b"\n"], [{"id": "", "event": "", "data": "a\nb\n"}]),
    ([b"data:x\r\n", b"\r\n"], [{"id": "", "event": "", "data": "x"}]),
    ([b": keep-alive\n", b"retry: 5\n", b"data: x\n", b"\n"], [{"id": "", "event": "", "data": "x"}]),
    ([b"event: ping\n", b"\n", b"id: 5\n", b"data: a\n", b"\n", b"data: b\n", b"\n"],
     [{"id": "5", "event": "", "data": "a"}, {"id": "5", "event": "", "data": "b"}]),
    ([b"data: a\n", b"\n", b"data: unfinished\n"], [{"id": "", "event": "", "data": "a"}]),
])
def test_sse_events(stream, want):
    from inferq.client import sse_events
    assert list(sse_events(stream)) == want


def test_step_worker_runs_a_pipeline_step(client):
    """A pipeline's middle step runs in this process: the StepWorker leases
    it, calls the function on numpy arrays and answers; a function that
    raises fails that attempt, and the step is offered again."""
    calls = []

    def double(inputs):
        calls.append(inputs["p"].shape)
        if len(calls) == 1:
            raise RuntimeError("a first attempt that fails")
        return {"q": inputs["p"] * 2}

    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    stop = threading.Event()
    worker = inferq.StepWorker(client, "scaled", "double", double, wait=1.0)
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    t.start()
    try:
        out = client.run("scaled", {"x": x}, timeout=60)
    finally:
        stop.set()
        t.join(timeout=10)
    direct = client.run("iris", {"x": x})
    np.testing.assert_allclose(out["doubled"], direct["probabilities"] * 2, rtol=1e-6)
    np.testing.assert_allclose(out["best"][:, 0], direct["probabilities"].max(axis=1) * 2, rtol=1e-6)
    assert worker.failed == 1 and worker.done == 1 and calls == [(2, 3), (2, 3)]
    rec = client.job(client.submit("iris", {"x": x})["id"], wait=10)
    assert rec["status"] == "succeeded"


def test_connections_are_reused(client):
    """Calls from one thread share one kept-alive connection."""
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    client.run("iris", {"x": x})
    conn = client._local.conn
    for _ in range(5):
        client.run("iris", {"x": x})
    assert client._local.conn is conn and conn.sock is not None


def test_submit_file(client, tmp_path):
    """A file goes as it is, its media type from its name: a WAV of four
    float samples, decoded by the pipeline and classified by iris."""
    import struct
    samples = np.array([0.5, -0.25, 0.75, 0.125], dtype=np.float32)
    data = samples.tobytes()
    wav = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
           struct.pack("<IHHIIHH", 16, 3, 1, 8000, 8000 * 4, 4, 32) + b"data" + struct.pack("<I", len(data)) + data)
    path = tmp_path / "clip.wav"
    path.write_bytes(wav)
    rec = client.wait(client.submit_file("wavsum", str(path))["id"])
    assert rec["status"] == "succeeded", rec
    out = client.result(rec["id"])
    np.testing.assert_allclose(out["samples"], samples[None, :])
    direct = client.run("iris", {"x": samples[None, :]})
    np.testing.assert_allclose(out["probabilities"], direct["probabilities"], rtol=1e-6)
    with pytest.raises(inferq.BadRequest, match="not a WAV file"):
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"not audio")
        client.submit_file("wavsum", str(bad))


def _wav(samples: np.ndarray) -> bytes:
    import struct
    data = samples.astype(np.float32).tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 3, 1, 8000, 8000 * 4, 4, 32) + b"data" + struct.pack("<I", len(data)) + data)


def test_batch_over_stored_objects(client, objects):
    """A batch over the WAVs under a prefix of the server's inputs: a line
    per file in key order, its key the custom_id; followed as the lines
    finish, and read whole at the end."""
    folder = objects / "inputs" / "wavsum" / "clips"
    folder.mkdir(parents=True)
    clips = {f"inputs/wavsum/clips/{i:02d}.wav": np.array([0.1 * i, 0.5, -0.25, 0.75], dtype=np.float32) for i in range(12)}
    for key, samples in clips.items():
        (objects / key).write_bytes(_wav(samples))
    rec = client.start_batch("wavsum", source="inputs/wavsum/clips/")
    followed = list(client.follow_batch(rec["id"]))
    assert sorted(l["line"] for l in followed) == list(range(1, 13))
    out = client.batch("wavsum", source="inputs/wavsum/clips/", poll=0.05)
    assert [o["custom_id"] for o in out] == sorted(clips)
    for o in out + followed:
        np.testing.assert_allclose(inferq.decode_response(o["response"])["samples"], clips[o["custom_id"]][None, :])
    with pytest.raises(inferq.InferqError, match="not among the sources|inputs/"):
        client.batch("wavsum", source="s3://elsewhere/")
