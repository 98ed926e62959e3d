"""`aiprod serve` as a real process on loopback: it answers what `aiprod predict` answers, batches concurrent clients,
sheds load with 503 and 504, drains on SIGTERM, logs each request, checks its API key, adds up its workers' metrics,
keeps to its OpenAPI schema, and refuses a broken bundle before it binds a port."""
import asyncio, base64, io, json, os, re, shutil, signal, socket, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode

from aiprod import export
from conftest import BIN, run_cli, wait_for

LISTENING = re.compile(r"aiprod: serving on (http://127\.0\.0\.1:\d+) ")


@dataclass
class Served:
    "A running `aiprod serve`: its process, where it listens, and the file its stderr goes to."
    process: subprocess.Popen
    url: str
    log: Path

    def stderr(self) -> str: return self.log.read_text()


@contextmanager
def serving(*args, env: dict | None = None):
    "`aiprod serve ARGS --port 0` in a process of its own, once it says where it listens and /readyz answers 200; SIGTERM on exit."
    environment = {k: v for k, v in os.environ.items() if k not in ("AIPROD_API_KEY", "AIPROD_API_KEY_FILE")}  # no key unless a test sets one
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "stderr"
        with open(log, "w") as err:  # a file, not a pipe: a server that logs much never blocks on it
            process = subprocess.Popen([BIN / "aiprod", "serve", *map(str, args), "--port", "0"], stdout=subprocess.DEVNULL,
                                       stderr=err, env={**environment, **(env or {})})
        def running():
            assert process.poll() is None, f"aiprod serve exited {process.returncode}: {log.read_text()}"
            return True
        try:
            wait_for(lambda: running() and LISTENING.search(log.read_text()), 120)
            server = Served(process, LISTENING.search(log.read_text())[1], log)
            wait_for(lambda: running() and status(server.url + "/readyz") == 200, 120)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try: process.wait(60)
                except subprocess.TimeoutExpired: process.kill(); process.wait()


def status(url: str) -> int | None:
    "The status of GET `url` on a new connection; None when it cannot connect."
    try: return httpx.get(url, timeout=10).status_code
    except httpx.TransportError: return None


def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    "POST every JSON body at once, each on a connection of its own."
    async def posts():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=len(bodies))) as client:
            return await asyncio.gather(*(client.post(url, json=body) for body in bodies))
    return asyncio.run(posts())


def metric(url: str, name: str, **labels) -> float:
    "The sum of the samples `name` whose labels include `labels`, in the server's /metrics."
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def b64(data: bytes) -> str: return base64.b64encode(data).decode()


def png(x: np.ndarray) -> bytes:
    "An 8×8 grey PNG of a digits test item (values 0–1)."
    from PIL import Image
    out = io.BytesIO(); Image.fromarray(np.round(x[0] * 255).astype(np.uint8), "L").save(out, "PNG"); return out.getvalue()


def predicted(bundle: Path, inputs: Path, ids: list[str], out: Path) -> list[dict]:
    "`aiprod predict BUNDLE INPUTS --out OUT.jsonl`: its rows, in the order of `ids`."
    done = run_cli("aiprod", "predict", bundle, inputs, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    return [rows[id_] for id_ in ids]


def assert_same(predictions: list[dict], expected: list[dict]):
    "Each prediction has the label of its expected row, and every class's probability within 1e-5."
    classes = list(expected[0]["probabilities"])
    assert [p["label"] for p in predictions] == [e["label"] for e in expected]
    np.testing.assert_allclose([[p["probabilities"][c] for c in classes] for p in predictions],
                               [[e["probabilities"][c] for c in classes] for e in expected], atol=1e-5)


@pytest.fixture(scope="module")
def digits(finished_runs, tmp_path_factory):
    "The digits CNN exported as versions 1 and 2 of `digits`, 64 of its test items as PNGs, and `aiprod predict`'s rows for them."
    run_dir, _, test = finished_runs("image")
    folder = tmp_path_factory.mktemp("digits")
    bundles = [export.export_run(run_dir, folder / f"v{v}", name="digits", version=str(v)) for v in (1, 2)]
    (folder / "pngs").mkdir()
    pngs = [png(x) for x in test.x[:64]]
    for i, data in enumerate(pngs): (folder / "pngs" / f"{i:02d}.png").write_bytes(data)
    ids = [str(folder / "pngs" / f"{i:02d}.png") for i in range(len(pngs))]
    return SimpleNamespace(bundles=bundles, pngs=pngs, expected=predicted(bundles[0], folder / "pngs", ids, folder / "cli.jsonl"))


@pytest.fixture(scope="module")
def sst2(finished_runs, tmp_path_factory):
    "The SST-2 LSTM exported as `sst2`, 64 of its test sentences, and `aiprod predict`'s rows for them."
    run_dir, _, test = finished_runs("text")
    folder = tmp_path_factory.mktemp("sst2")
    bundle = export.export_run(run_dir, folder / "bundle", name="sst2")
    texts = [str(t) for t in test.x[:64]]
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ids = [f"{folder / 'texts.jsonl'}:{n}" for n in range(1, len(texts) + 1)]
    return SimpleNamespace(bundle=bundle, texts=texts, expected=predicted(bundle, folder / "texts.jsonl", ids, folder / "cli.jsonl"))


@pytest.fixture(scope="module")
def access_log(tmp_path_factory) -> Path:
    "Where the shared server writes its access log."
    return tmp_path_factory.mktemp("access") / "access.jsonl"


@pytest.fixture(scope="module")
def server(digits, sst2, access_log):
    "One server of three bundles: digits versions 1 and 2, and sst2, with an access log."
    with serving(*digits.bundles, sst2.bundle, "--access-log", access_log) as served:
        yield served


def test_two_models_in_one_server_answer_what_aiprod_predict_answers(server, digits, sst2):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        images = client.post("/predict", params={"model": "digits"}, json={"inputs": list(map(b64, digits.pngs))})
        uploaded = client.post("/predict", params={"model": "digits"},
                               files=[("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(digits.pngs)])
        texts = client.post("/predict", params={"model": "sst2"}, json={"inputs": sst2.texts})
        v2 = client.post("/v2/models/sst2/infer", json={"inputs": [{"name": "input", "shape": [len(sst2.texts)], "datatype": "BYTES", "data": sst2.texts}]})
    for response in (images, uploaded, texts, v2): assert response.status_code == 200, response.text
    assert (images.json()["model"], texts.json()["model"]) == ("digits", "sst2")
    assert_same(images.json()["predictions"], digits.expected)
    assert_same(uploaded.json()["predictions"], digits.expected)
    assert_same(texts.json()["predictions"], sst2.expected)
    probabilities, labels = v2.json()["outputs"]
    assert (probabilities["name"], probabilities["shape"], labels["name"]) == ("probabilities", [len(sst2.texts), 2], "label")
    classes = list(sst2.expected[0]["probabilities"])
    rows = np.reshape(probabilities["data"], probabilities["shape"])
    assert_same([{"label": label, "probabilities": dict(zip(classes, row))} for label, row in zip(labels["data"], rows)], sst2.expected)


def test_versions_of_a_model_are_listed_and_addressed(server, digits):
    bytes_tensor = {"inputs": [{"name": "input", "shape": [8], "datatype": "BYTES", "data": list(map(b64, digits.pngs[:8]))}]}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v2/models/digits").json()["versions"] == ["1", "2"]
        assert client.get("/v2/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}
        first = client.post("/v2/models/digits/versions/1/infer", json=bytes_tensor).json()
        latest = client.post("/v2/models/digits/infer", json=bytes_tensor).json()
        assert (first["model_version"], latest["model_version"]) == ("1", "2")
        assert first["outputs"][1]["data"] == [e["label"] for e in digits.expected[:8]]
        np.testing.assert_allclose(first["outputs"][0]["data"], latest["outputs"][0]["data"], atol=1e-6)
        assert client.post("/predict", params={"model": "digits"}, json={"inputs": [b64(digits.pngs[0])]}).json()["version"] == "2"
        assert client.post("/predict", params={"model": "digits", "version": "1"}, json={"inputs": [b64(digits.pngs[0])]}).json()["version"] == "1"
        missing = client.get("/v2/models/digits/versions/3")
        assert missing.status_code == 404 and "no version '3'; served: 1, 2" in missing.json()["error"]


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, digits):
    passes, inputs = (metric(server.url, f"aiprod_batch_size_{s}", model="digits") for s in ("count", "sum"))
    answered = metric(server.url, "aiprod_requests_total", method="POST", endpoint="/predict", status="200")
    responses = post_all(server.url + "/predict?model=digits", [{"inputs": [b64(data)]} for data in digits.pngs])
    assert [r.status_code for r in responses] == [200] * len(digits.pngs)
    assert_same([r.json()["predictions"][0] for r in responses], digits.expected)  # nobody got another's answer
    assert len({r.headers["x-request-id"] for r in responses}) == len(responses)
    assert metric(server.url, "aiprod_batch_size_sum", model="digits") - inputs == len(digits.pngs)  # every input in one pass
    assert metric(server.url, "aiprod_batch_size_count", model="digits") - passes < len(digits.pngs)  # fewer passes than requests
    assert metric(server.url, "aiprod_requests_total", method="POST", endpoint="/predict", status="200") - answered == len(digits.pngs)


def test_access_log_has_a_json_line_per_request(server, access_log, digits, sst2):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        named = client.post("/predict", params={"model": "sst2"}, json={"inputs": sst2.texts[:3]}, headers={"X-Request-ID": "e2e-log-1"})
        unnamed = client.post("/v2/models/digits/versions/1/infer",
                              json={"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [b64(digits.pngs[0])]}]})
        unknown = client.post("/predict", params={"model": "nope"}, json={"inputs": ["x"]})
        client.get("/readyz"); client.get("/metrics")  # probes and scrapes are not logged
    assert named.headers["x-request-id"] == "e2e-log-1" and unknown.status_code == 404
    ids = [r.headers["x-request-id"] for r in (named, unnamed, unknown)]
    lines = lambda: {line["request_id"]: line for line in map(json.loads, access_log.read_text().splitlines())}
    wait_for(lambda: set(ids) <= set(lines()), 10)  # written by a thread of its own
    logged = lines()
    assert {k: logged[ids[0]][k] for k in ("model", "version", "status", "path", "inputs")} == \
           {"model": "sst2", "version": "1", "status": 200, "path": "/predict", "inputs": 3}
    assert {k: logged[ids[1]][k] for k in ("model", "version", "status", "inputs")} == {"model": "digits", "version": "1", "status": 200, "inputs": 1}
    for id_ in ids[:2]: assert logged[id_]["batch_size"] >= logged[id_]["inputs"] and logged[id_]["latency_ms"] > 0
    assert logged[ids[2]]["status"] == 404 and "model" not in logged[ids[2]]
    assert not any(line["path"] in ("/readyz", "/metrics") for line in logged.values())


def test_a_full_queue_answers_503_with_retry_after(digits):
    # a batch waits up to --max-wait-ms for others to fill it, and --max-queue 2 holds less than a batch: the first two
    # requests wait there; the others, all sent within that second, find the queue full
    with serving(digits.bundles[0], "--max-queue", 2, "--max-wait-ms", 1000) as server:
        responses = post_all(server.url + "/predict", [{"inputs": [b64(data)]} for data in digits.pngs[:30]])
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 2 and statuses.count(503) == 28, statuses
        for r, expected in zip(responses, digits.expected):
            if r.status_code == 503: assert r.headers["retry-after"] == "1" and "(--max-queue 2)" in r.json()["error"]
            else: assert_same(r.json()["predictions"], [expected])
        assert httpx.post(server.url + "/predict", json={"inputs": [b64(digits.pngs[0])]}, timeout=10).status_code == 200


def test_a_request_past_its_deadline_answers_504(digits):
    # one input waits up to 2 s for seven others (--max-wait-ms), past its 0.5 s --timeout; eight fill a batch at once
    with serving(digits.bundles[0], "--max-batch-size", 8, "--max-wait-ms", 2000, "--timeout", 0.5) as server:
        late = httpx.post(server.url + "/predict", json={"inputs": [b64(digits.pngs[0])]}, timeout=10)
        assert late.status_code == 504 and "no answer within 0.5 s (--timeout)" in late.json()["error"]
        full = httpx.post(server.url + "/predict", json={"inputs": list(map(b64, digits.pngs[:8]))}, timeout=10)
        assert full.status_code == 200
        assert_same(full.json()["predictions"], digits.expected[:8])
        assert metric(server.url, "aiprod_requests_total", endpoint="/predict", status="504") == 1


def test_sigterm_drains_requests_in_flight_then_exits_0(digits):
    bodies = [{"inputs": list(map(b64, digits.pngs[3 * i:3 * i + 3]))} for i in range(16)]
    # 48 inputs fill no batch of 64: the 16 requests wait --max-wait-ms for more, in flight, when SIGTERM comes
    with serving(digits.bundles[0], "--max-batch-size", 64, "--max-wait-ms", 2000) as server:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post_all, server.url + "/predict", bodies)
            wait_for(lambda: metric(server.url, "aiprod_queue_depth", model="digits") == 48, 20)
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: status(server.url + "/readyz") != 200, 10)  # 503 while draining, or the port closed
            try: late = httpx.post(server.url + "/predict", json=bodies[0], timeout=10)
            except httpx.TransportError: late = None  # refused: the port is closed
            assert server.process.poll() is None  # the late request came while the server was still draining
            responses = in_flight.result()
        if late is not None: assert late.status_code == 503 and "shutting down" in late.json()["error"]
        assert [r.status_code for r in responses] == [200] * len(bodies)
        for i, r in enumerate(responses): assert_same(r.json()["predictions"], digits.expected[3 * i:3 * i + 3])
        assert server.process.wait(20) == 0
        assert "Traceback" not in server.stderr()


def test_api_key_from_a_file_in_the_environment(digits, tmp_path):
    (tmp_path / "key").write_text("e2e-s3cret\n")
    with serving(digits.bundles[0], env={"AIPROD_API_KEY_FILE": str(tmp_path / "key")}) as server:
        body = {"inputs": [b64(digits.pngs[0])]}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            refused = client.post("/predict", json=body)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert client.post("/predict", json=body, headers={"Authorization": "Bearer e2e-s3cre"}).status_code == 401
            assert client.get("/v2/models/digits").status_code == 401
            allowed = client.post("/predict", json=body, headers={"Authorization": "Bearer e2e-s3cret"})
            assert allowed.status_code == 200 and allowed.json()["predictions"][0]["label"] == digits.expected[0]["label"]
            assert [client.get(path).status_code for path in ("/livez", "/readyz", "/v2/health/live", "/metrics")] == [200] * 4
            info = client.get("/info", headers={"X-API-Key": "e2e-s3cret"})
            assert info.json()["server"]["api_key"] is True and "e2e-s3cret" not in info.text
        assert "e2e-s3cret" not in server.stderr()


def test_a_corrupt_bundle_stops_serve_before_it_binds(digits, tmp_path):
    broken = Path(shutil.copytree(digits.bundles[0], tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"junk")
    with socket.socket() as probe:  # a free port, named explicitly: serve must not bind it
        probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]
    done = run_cli("aiprod", "serve", broken, digits.bundles[0], "--port", port, timeout=120)
    assert done.returncode == 2 and f"{broken / 'model.safetensors'}: corrupt" in done.stderr, done.stderr
    assert "serving on" not in done.stderr
    with socket.socket() as probe: probe.bind(("127.0.0.1", port))  # still free


def test_workers_each_answer_and_metrics_add_up(digits, tmp_path):
    with serving(digits.bundles[0], "--workers", 2, env={"TMPDIR": str(tmp_path)}) as server:
        main = psutil.Process(server.process.pid)
        workers = lambda: [p for p in main.children() if "spawn_main" in " ".join(p.cmdline())]
        wait_for(lambda: len(workers()) == 2, 60)
        body = {"inputs": list(map(b64, digits.pngs[:4]))}
        for stopped in workers():
            stopped.suspend()  # a stopped worker accepts nothing: every new connection goes to the other
            try:
                wait_for(lambda: status(server.url + "/readyz") == 200, 60)
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    for _ in range(3): assert_same(client.post("/predict", json=body).json()["predictions"], digits.expected[:4])
            finally: stopped.resume()
        assert metric(server.url, "aiprod_requests_total", method="POST", endpoint="/predict", status="200") == 6
        assert metric(server.url, "aiprod_predictions_total", model="digits") == 24
        assert metric(server.url, "aiprod_batch_size_sum", model="digits") == 24
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    assert list(tmp_path.iterdir()) == []  # the workers' metrics folder is gone


IMPORTS = """
import json, sys
from aiprod.predict import load
from aiprod.serve import create_app, make_service
create_app(make_service([load(bundle) for bundle in sys.argv[1:]]))
print(json.dumps([m for m in ("aiprod.training", "aiprod.evaluation", "aiprod.report", "aiprod.batch", "aiprod.export",
                              "aiprod.optimize", "aiprod.compare", "papermill", "nbclient", "matplotlib") if m in sys.modules]))
"""


def test_serving_imports_no_training_code(digits, sst2):
    done = subprocess.run([sys.executable, "-c", IMPORTS, digits.bundles[0], sst2.bundle], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


CONFORMANCE = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
               schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


def test_answers_keep_to_the_openapi_schema(server):
    "Schemathesis's requests, valid and not, to every operation: no 500, and every answer as /openapi.json documents it."
    # (not positive_data_acceptance: a schema-valid random string is no image, and is rightly refused)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    served = {"name": ["digits", "sst2"], "model": ["digits", "sst2"], "version": ["1", "2"]}

    def served_mostly(context, values):  # random names would reach nothing but the 404 of an unknown model
        return st.fixed_dictionaries({k: st.sampled_from([*served[k], v]) if k in served else st.just(v) for k, v in (values or {}).items()})

    schema.hook("flatmap_path_parameters")(served_mostly)
    schema.hook("flatmap_query")(served_mostly)
    for operation in (result.ok() for result in schema.get_all_operations()):
        @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case):
            case.call_and_validate(checks=CONFORMANCE)
        answers_as_documented()


def test_v2_infer_refuses_a_body_not_utf8_as_predict_does(server):
    body = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["café"]}]}, ensure_ascii=False)
    for path in ("/predict?model=sst2", "/v2/models/sst2/infer"):
        answer = httpx.post(server.url + path, content=body.encode("latin-1"), headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 422 and answer.json()["field"] == "body", (path, answer.status_code, answer.text)
        assert answer.json()["error"].startswith("body: not valid JSON")
