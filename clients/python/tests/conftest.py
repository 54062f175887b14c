"""Starts a real `inferq serve` for the tests: the bundled iris model and
identities (a model of every V2 datatype), with two API tokens: OPS may use
every model, TEAM only iris. Set INFERQ_BIN to the binary (default: the
repository's bin/inferq, which `make build` makes) and ONNXRUNTIME_LIB as
for the server."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
OPS = "0ps0ps0ps0ps0ps0ps0ps0ps0ps0ps00"
TEAM = "teamteamteamteamteamteamteamteam"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where the server keeps its objects (its --data's objects folder), set by
# the server fixture: a batch over stored objects reads them from there.
STATE = {}


@pytest.fixture(scope="session")
def objects(server) -> Path:
    return STATE["objects"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    binary = os.environ.get("INFERQ_BIN") or str(ROOT / "bin" / "inferq")
    if not os.path.exists(binary):
        pytest.fail(f"no inferq binary at {binary}: run `make build` (or set INFERQ_BIN)")
    base = tmp_path_factory.mktemp("inferq")
    models = base / "models"
    for name, src in [("iris", ROOT / "testdata/models/iris/1/model.onnx"),
                      ("identities", Path(__file__).parent / "models/identities/1/model.onnx")]:
        (models / name / "1").mkdir(parents=True)
        shutil.copy(src, models / name / "1" / "model.onnx")
    # A pipeline whose middle step is Python (test_step_worker).
    (models / "scaled").mkdir()
    (models / "scaled" / "pipeline.yaml").write_text(
        "steps:\n"
        "  - {name: classify, model: iris, inputs: {x: $x}}\n"
        "  - {name: double, external: double, lease_timeout: 5s, inputs: {p: classify.probabilities}}\n"
        "  - {name: top, op: topk, with: {k: 1}, inputs: {x: double.q}}\n"
        "outputs: {doubled: double.q, best: top.values}\n")
    # A pipeline that takes a WAV file (test_submit_file).
    (models / "wavsum").mkdir()
    (models / "wavsum" / "pipeline.yaml").write_text(
        "inputs: [{name: clip, datatype: BYTES, shape: [1]}]\n"
        "steps:\n"
        "  - {name: decode, op: audio.decode, with: {rate: 8000}, inputs: {x: $clip}}\n"
        "  - {name: classify, model: iris, inputs: {x: decode.y}}\n"
        "outputs: {samples: decode.y, probabilities: classify.probabilities}\n")
    STATE["objects"] = base / "data" / "objects"
    tokens = base / "tokens"
    tokens.write_text(f"{OPS}\n{TEAM} iris\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(base / "serve.log", "w")
    proc = subprocess.Popen([binary, "serve", "--models", str(models), "--data", str(base / "data"),
                             "--http", f"127.0.0.1:{port}", "--tokens-file", str(tokens), "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("inferq did not start:\n" + (base / "serve.log").read_text())
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
