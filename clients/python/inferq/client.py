"""The inferq HTTP client: jobs from numpy arrays, results back as numpy
arrays, result streams, batch files. Standard library and numpy only."""

from __future__ import annotations

import asyncio
import http.client
import json
import mimetypes
import os
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from . import errors
from ._tensors import datatype_of, decode_binary_response, decode_response, decode_tensor, encode_binary

FINAL = ("succeeded", "failed", "cancelled", "expired")


# Outputs come back in the binary tensor extension: raw bytes into numpy,
# no JSON numbers to parse.
BINARY_OUTPUTS = {"binary_data_output": True}



def sse_events(stream: Iterable[bytes]) -> Iterator[dict]:
    """Yields the server-sent events of a text/event-stream body, read line
    by line, as the HTML standard parses them: ``data`` lines joined by
    newlines, the one space after a colon dropped, comments and unknown
    fields ignored, an event dispatched at a blank line when it has data,
    and its ``id`` the last one the stream set. The one SSE reader of the
    Python client."""
    last_id = ""
    name, data = "", None
    for raw in stream:
        for line in raw.decode("utf-8").splitlines():
            if line == "":
                if data is not None:
                    yield {"id": last_id, "event": name, "data": "\n".join(data)}
                name, data = "", None
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data = (data or []) + [value]
            elif field == "event":
                name = value
            elif field == "id" and "\0" not in value:
                last_id = value


class Client:
    """A client of one inferq server.

    ``url`` defaults to ``$INFERQ_URL`` (else http://localhost:8080) and
    ``token`` to ``$INFERQ_TOKEN``. ``ca_file`` trusts a private CA for
    https. Calls are synchronous and safe to make from several threads;
    :class:`AsyncClient` wraps them for asyncio.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 ca_file: str | None = None):
        self.url = (url or os.environ.get("INFERQ_URL") or "http://localhost:8080").rstrip("/")
        self.token = token if token is not None else os.environ.get("INFERQ_TOKEN")
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url {self.url!r}: want http(s)://host[:port][/prefix]")
        self._https, self._host, self._port, self._prefix = u.scheme == "https", u.hostname, u.port, u.path
        # One kept-alive connection per thread: calls from one thread reuse
        # it; threads never share one.
        self._local = threading.local()

    # -- HTTP ------------------------------------------------------------

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self._ssl or ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                 timeout: float | None = None, stream: bool = False) -> http.client.HTTPResponse:
        """Sends a request on this thread's kept-alive connection (a
        connection of its own for a ``stream``, read for as long as the
        caller reads) and returns the response, or raises the error the
        status says. A kept-alive connection the server closed while idle is
        opened again and the request sent once more: it was never read."""
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if headers:
            h.update(headers)
        t = timeout or self.timeout
        for again in (False, True):
            conn = None if stream else getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._connect(t)
                if not stream:
                    self._local.conn = conn
            elif conn.sock is not None:
                conn.sock.settimeout(t)
            conn.timeout = t
            try:
                conn.request(method, self._prefix + path, body=body, headers=h)
                res = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, http.client.ImproperConnectionState, BrokenPipeError,
                    ConnectionResetError) as e:
                conn.close()
                if not stream:
                    self._local.conn = None
                if reused and not again:
                    continue  # closed while idle: a fresh connection
                raise errors.Unavailable(0, f"cannot reach {self.url}: {e}") from None
            except OSError as e:
                conn.close()
                if not stream:
                    self._local.conn = None
                raise errors.Unavailable(0, f"cannot reach {self.url}: {e}") from None
        if res.status >= 400:
            raw = res.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            msg = doc.get("error", "") if isinstance(doc, dict) else raw.decode("utf-8", "replace")
            retry = res.headers.get("Retry-After")
            raise errors.from_status(res.status, msg or res.reason, float(retry) if retry else None, doc)
        return res

    def _json(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
              timeout: float | None = None) -> Any:
        with self._request(method, path, body, headers, timeout) as res:
            return json.loads(res.read())

    def _outputs(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """A V2 response's outputs, read from JSON or, when the answer is in
        the binary extension, straight from its bytes."""
        h = {"Accept": "application/octet-stream, application/json"}
        h.update(headers or {})
        with self._request(method, path, body, h) as res:
            raw = res.read()
            n = res.headers.get("Inference-Header-Content-Length")
            if n is not None:
                return decode_binary_response(raw, int(n))
            return decode_response(json.loads(raw))

    # -- jobs ------------------------------------------------------------

    @staticmethod
    def _path(model: str, version: int | None, tail: str, v2: bool = False) -> str:
        m = urllib.parse.quote(model, safe="")
        base = f"/v2/models/{m}" if v2 else f"/v1/models/{m}"
        if version is not None:
            base += f"/versions/{int(version)}"
        return base + tail

    @staticmethod
    def _options(idempotency_key: str | None, priority: str | None, timeout: float | None,
                 webhook: str | None) -> dict[str, str]:
        h = {}
        if idempotency_key:
            h["Idempotency-Key"] = idempotency_key
        if priority:
            h["Inferq-Priority"] = priority
        if timeout is not None:
            h["Inferq-Timeout"] = f"{timeout}s"
        if webhook:
            h["Inferq-Webhook"] = webhook
        return h

    def submit(self, model: str, inputs: Mapping[str, Any], *, outputs: Iterable[str] | None = None,
               version: int | None = None, idempotency_key: str | None = None, priority: str | None = None,
               job_timeout: float | None = None, webhook: str | None = None, request_id: str | None = None) -> dict:
        """Queues a job of ``inputs`` (name -> numpy array, any V2 datatype,
        sent as binary tensors) and returns its record once the server has
        stored it. ``job_timeout`` expires it if not started in time. Its
        outputs are asked for in binary, read back with no conversion."""
        body, n = encode_binary(inputs, outputs, request_id, BINARY_OUTPUTS)
        h = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}
        h.update(self._options(idempotency_key, priority, job_timeout, webhook))
        return self._json("POST", self._path(model, version, "/jobs"), body, h)

    def submit_file(self, model: str, path: str, content_type: str | None = None, *,
                    idempotency_key: str | None = None, priority: str | None = None,
                    job_timeout: float | None = None, webhook: str | None = None) -> dict:
        """Queues a job whose body is the file at ``path`` as it is (a
        picture, a WAV), for a model or pipeline of one BYTES input; its
        media type is ``content_type``, else guessed from its name."""
        ctype = content_type or _media_type(path)
        if not ctype:
            raise ValueError(f"{path}: its media type is not known from its name; pass content_type")
        with open(path, "rb") as f:
            body = f.read()
        h = {"Content-Type": ctype}
        h.update(self._options(idempotency_key, priority, job_timeout, webhook))
        return self._json("POST", self._path(model, None, "/jobs"), body, h)

    def job(self, job_id: str, wait: float | None = None) -> dict:
        """The job's record; with ``wait`` (seconds), held until the job is
        final or the wait ends."""
        q = f"?wait={wait}s" if wait else ""
        return self._json("GET", f"/v1/jobs/{job_id}{q}", timeout=(wait or 0) + self.timeout)

    def wait(self, job_id: str, timeout: float = 300.0) -> dict:
        """Waits for the job to be final and returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            rec = self.job(job_id, wait=max(1.0, min(left, 30.0)))
            if rec["status"] in FINAL:
                return rec
            if left <= 0:
                raise errors.Unavailable(0, f"job {job_id} is still {rec['status']} after {timeout}s")

    def result(self, job_id: str) -> dict[str, np.ndarray]:
        """The outputs of a succeeded job, by name."""
        return self._outputs("GET", f"/v1/jobs/{job_id}/result")

    def run(self, model: str, inputs: Mapping[str, Any], timeout: float = 300.0, **kw: Any) -> dict[str, np.ndarray]:
        """Submits a job, waits for it and returns its outputs; raises
        :class:`errors.JobFailed` if it does not succeed."""
        rec = self.wait(self.submit(model, inputs, **kw)["id"], timeout)
        if rec["status"] != "succeeded":
            raise errors.JobFailed(rec)
        return self.result(rec["id"])

    def infer(self, model: str, inputs: Mapping[str, Any], *, outputs: Iterable[str] | None = None,
              version: int | None = None) -> dict[str, np.ndarray]:
        """The V2 synchronous call (POST /v2/models/{model}/infer): through
        the same queue and batcher, answered when done."""
        body, n = encode_binary(inputs, outputs, parameters=BINARY_OUTPUTS)
        h = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}
        return self._outputs("POST", self._path(model, version, "/infer", v2=True), body, h)

    def cancel(self, job_id: str) -> dict:
        """Cancels a job that has not started; raises :class:`errors.Conflict`
        once it has."""
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    # -- streams ---------------------------------------------------------

    def stream(self, model: str, last_event_id: str | None = None, from_start: bool = False,
               reconnect: bool = True) -> Iterator[dict]:
        """Yields each finished job of the model as it lands (a record with
        ``response`` inline when small), from now, from ``last_event_id`` or
        from the start of what is kept. A dropped connection is resumed from
        the last event seen, nothing missed or repeated. Each record carries
        its event id as ``event_id``."""
        last = last_event_id
        while True:
            h = {"Accept": "text/event-stream"}
            if last:
                h["Last-Event-ID"] = last
            path = self._path(model, None, "/results") + ("?from=start" if from_start and not last else "")
            try:
                with self._request("GET", path, headers=h, timeout=60, stream=True) as res:
                    for ev in sse_events(res):
                        rec = json.loads(ev["data"])
                        rec["event_id"] = ev["id"] or None
                        last = ev["id"] or last
                        yield rec
            except (OSError, errors.Unavailable):
                if not reconnect:
                    raise
                time.sleep(1)
                continue
            if not reconnect:
                return

    # -- batch files -----------------------------------------------------

    def batch(self, model: str, lines: Iterable[Mapping[str, Any]] | str | None = None, *, source: str | None = None,
              progress: Callable[[dict], None] | None = None, poll: float = 0.5, timeout: float = 3600.0) -> list[dict]:
        """Runs a batch file: ``lines`` is a path to a JSON Lines file, or
        requests as dicts ({"inputs": [...]} in V2 JSON, or
        {"custom_id": ..., "inputs": {name: array}}); or, with ``source``
        instead, a batch over stored objects: a line per object under the
        prefix (``inputs/{model}/...`` of the server's store, or an
        ``s3://bucket/prefix/`` the server allows), the object the
        model's one BYTES input and its key the line's custom_id. Calls
        ``progress`` with the batch record as it runs, and returns its
        output lines."""
        rec = self.start_batch(model, lines, source=source)
        deadline = time.monotonic() + timeout
        while rec["status"] in ("queued", "running"):
            if progress:
                progress(rec)
            if time.monotonic() > deadline:
                raise errors.Unavailable(0, f"batch {rec['id']} still {rec['status']} after {timeout}s")
            time.sleep(poll)
            rec = self._json("GET", f"/v1/batches/{rec['id']}")
        if progress:
            progress(rec)
        if rec["status"] == "failed" and not rec.get("queued_at"):
            raise errors.InferqError(0, f"batch {rec['id']} failed: {rec.get('error', '')}", body=rec)
        with self._request("GET", f"/v1/batches/{rec['id']}/output") as res:
            return [json.loads(l) for l in res if l.strip()]

    def start_batch(self, model: str, lines: Iterable[Mapping[str, Any]] | str | None = None, *,
                    source: str | None = None) -> dict:
        """Starts a batch (see ``batch``) and returns its record at once."""
        if (lines is None) == (source is None):
            raise ValueError("give lines or a source, one of them")
        if source is not None:
            return self._json("POST", self._path(model, None, "/batches") + "?source=" + urllib.parse.quote(source, safe=""))
        if isinstance(lines, str):
            with open(lines, "rb") as f:
                body = f.read()
        else:
            body = b"".join(json.dumps(_line_json(l), separators=(",", ":")).encode() + b"\n" for l in lines)
        return self._json("POST", self._path(model, None, "/batches"), body, {"Content-Type": "application/jsonl"})

    def follow_batch(self, batch_id: str) -> Iterator[dict]:
        """Yields a batch's output lines as they finish, each with its
        ``line`` number, until every line has come; a dropped stream is
        resumed after the lines already yielded."""
        n, pause = 0, 0.0
        while True:
            if pause:
                time.sleep(pause)
            pause = min(2 * pause + 0.1, 5.0)
            try:
                with self._request("GET", f"/v1/batches/{batch_id}/output?follow=1&after={n}", stream=True,
                                   timeout=3600) as res:
                    for raw in res:
                        if not raw.strip():
                            continue
                        line = json.loads(raw)
                        if "line" not in line:
                            break  # the server said why it stopped: ask again
                        n += 1
                        yield line
            except (errors.Unavailable, http.client.HTTPException, OSError):
                continue
            rec = self._json("GET", f"/v1/batches/{batch_id}")
            if rec["status"] not in ("queued", "running") and (n >= rec["counts"]["total"] or not rec.get("queued_at")):
                return

    def cancel_batch(self, batch_id: str) -> dict:
        """Cancels the lines of a batch that have not started."""
        return self._json("DELETE", f"/v1/batches/{batch_id}")

    # -- models ----------------------------------------------------------

    def models(self) -> list[dict]:
        """The models served, with their versions, settings and workers."""
        return self._json("GET", "/v1/models")["models"]


def _media_type(path: str) -> str | None:
    """A file's media type from its name: the types inferq decodes, then
    what Python knows."""
    ext = os.path.splitext(path)[1].lower()
    known = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
             ".gif": "image/gif", ".bmp": "image/bmp", ".wav": "audio/wav"}
    return known.get(ext) or mimetypes.guess_type(path)[0]


def _line_json(line: Mapping[str, Any]) -> dict:
    """A batch line as V2 JSON: inputs given as {name: array} are written
    as tensors."""
    out = dict(line)
    ins = out.get("inputs")
    if isinstance(ins, Mapping):
        out["inputs"] = _tensors_json(ins)
    return out


def _tensors_json(arrays: Mapping[str, Any]) -> list[dict]:
    """Named arrays as V2 JSON tensors."""
    tensors = []
    for name, value in arrays.items():
        a = np.asarray(value)
        dt = datatype_of(a)
        data = [e.decode() if isinstance(e, bytes) else e for e in a.reshape(-1).tolist()]
        tensors.append({"name": name, "shape": list(a.shape), "datatype": dt, "data": data})
    return tensors


class StepWorker:
    """Runs a pipeline step declared ``external: NAME`` in pipeline.yaml
    with your function, in your process: a loop that leases the step's
    next job, calls ``fn`` with its inputs (name -> numpy array, by the
    names the step gives them) and answers with what ``fn`` returns (name
    -> array: the step's outputs, which later steps read as
    ``step.name``). An exception ``fn`` raises fails that attempt; the step
    is offered again up to its ``max_attempts``. A lease not answered
    within the step's ``lease_timeout`` is offered again, so ``fn`` should
    take less.

        worker = inferq.StepWorker(client, "ocr", "crop", lambda ins: {"crops": crop(ins["image"])})
        worker.run()          # until stop.set(), if given a threading.Event
    """

    def __init__(self, client: Client, pipeline: str, step: str,
                 fn: Callable[[dict[str, np.ndarray]], Mapping[str, Any]], wait: float = 10.0):
        self.client, self.fn, self.wait = client, fn, wait
        self._path = (f"/v1/pipelines/{urllib.parse.quote(pipeline, safe='')}"
                      f"/steps/{urllib.parse.quote(step, safe='')}/leases?wait={wait}s")
        self.done = 0    # leases answered with outputs
        self.failed = 0  # leases answered with an error

    def run_once(self) -> bool:
        """Leases one job, waiting up to ``wait`` seconds, and answers it;
        False when none came."""
        with self.client._request("POST", self._path, b"", timeout=self.wait + self.client.timeout) as res:
            if res.status == 204:
                res.read()
                return False
            lease = json.loads(res.read())
        inputs = {t["name"]: decode_tensor(t) for t in lease["request"]["inputs"]}
        try:
            answer = {"outputs": _tensors_json(self.fn(inputs))}
            self.done += 1
        except Exception as e:  # the user's code failed: this attempt fails
            answer = {"error": f"{type(e).__name__}: {e}"}
            self.failed += 1
        body = json.dumps(answer, separators=(",", ":")).encode()
        try:
            self.client._json("POST", f"/v1/leases/{lease['lease']}", body, {"Content-Type": "application/json"})
        except errors.NotFound:
            pass  # expired meanwhile: the step was offered again
        return True

    def run(self, stop: threading.Event | None = None) -> None:
        """Serves the step until ``stop`` is set (for ever without one). A
        server that cannot be reached is tried again a second later."""
        while stop is None or not stop.is_set():
            try:
                self.run_once()
            except errors.Unavailable:
                time.sleep(1)


class AsyncClient:
    """The client for asyncio: each call runs the synchronous one in a
    thread (``asyncio.to_thread``), so that an event loop is never blocked."""

    def __init__(self, *args: Any, **kw: Any):
        self.sync = Client(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.sync, name)
        if not callable(fn) or name == "stream":
            return fn

        async def call(*args: Any, **kw: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kw)

        return call
