"""`aiprod serve --log-dir` as a real process: every answered prediction is logged once, across rotated and gzipped files;
a server killed with SIGKILL loses at most the lines of its last fraction of a second (measured); the drift gauges of /metrics flag shifted
traffic on the right features."""
import base64, gzip, io, json, signal, threading, time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from aiprod.serve import log_files
from conftest import wait_for
from test_serve import metric, post_all, serving


def png(image: np.ndarray) -> str:
    "A (1, height, width) image in [0, 1] as base64 PNG."
    out = io.BytesIO()
    Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def logged(folder: Path) -> list[dict]:
    "Every readable line of the prediction log, in rotated and current files; a line cut short by a kill is skipped."
    lines = []
    for path in log_files(folder):
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            for text in f:
                try: lines.append(json.loads(text))
                except json.JSONDecodeError: pass
    return lines


def test_rotated_log_keeps_every_prediction_once(digits_bundle, tmp_path):
    bundle, test = digits_bundle
    with serving(bundle, "--log-dir", tmp_path, "--log-max-mb", "0.02", "--access-log", "off") as server:
        bodies = [{"inputs": [png(x) for x in test.x[i:i + 4]]} for i in range(0, 240, 4)]
        answers = [r for batch in range(0, len(bodies), 8) for r in post_all(server.url + "/predict", bodies[batch:batch + 8])]
        assert {r.status_code for r in answers} == {200}
    files = log_files(tmp_path)
    assert len(files) > 2 and all(f.name.endswith(".jsonl.gz") for f in files[:-1]), files  # rotated, then gzipped
    lines = logged(tmp_path)
    sent = sorted((r.json()["request_id"], i, p["label"]) for r in answers for i, p in enumerate(r.json()["predictions"]))
    assert sorted((l["request_id"], l["index"], l["label"]) for l in lines) == sent


def test_kill_loses_at_most_the_last_lines(digits_bundle, tmp_path):
    "SIGKILL during traffic from 32 clients: every prediction answered before the kill is logged, but those of the last moment."
    bundle, test = digits_bundle
    bodies = [{"inputs": [png(x)]} for x in test.x[:32]]
    answered, stop = {}, threading.Event()  # request id → when its round of 32 came back
    with serving(bundle, "--log-dir", tmp_path, "--access-log", "off") as server:
        def clients():
            while not stop.is_set():
                try: answers = post_all(server.url + "/predict", bodies)
                except httpx.TransportError: return  # the server is gone
                answered.update((r.json()["request_id"], time.monotonic()) for r in answers if r.status_code == 200)
        traffic = threading.Thread(target=clients)
        traffic.start()
        wait_for(lambda: len(answered) >= 500, 120)
        server.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        server.process.wait()
        stop.set(); traffic.join()
    lost = set(answered) - {l["request_id"] for l in logged(tmp_path)}
    print(f"SIGKILL after {len(answered)} answered predictions: {len(lost)} not in the log")
    assert all(killed - answered[i] < 1 for i in lost), sorted(killed - answered[i] for i in lost)  # the writer flushes every 0.2 s


def test_drift_gauges_flag_shifted_traffic(digits_bundle, tmp_path):
    bundle, test = digits_bundle
    with serving(bundle, "--log-dir", tmp_path, "--access-log", "off") as plain, \
         serving(bundle, "--access-log", "off") as inverted:
        for server, images in ((plain, test.x), (inverted, 1 - test.x)):
            bodies = [{"inputs": [png(x) for x in images[i:i + 8]]} for i in range(0, len(images), 8)]
            assert {r.status_code for r in post_all(server.url + "/predict", bodies)} == {200}
        for server in (plain, inverted):  # scored every 10 s
            wait_for(lambda: "aiprod_drifted_share{" in httpx.get(server.url + "/metrics").text, 30)
        detected = lambda server, feature: metric(server.url, "aiprod_drift_detected", feature=feature)
        assert detected(inverted, "mean") == 1 and detected(inverted, "width") == detected(inverted, "height") == 0
        assert metric(plain.url, "aiprod_drifted_share") < 0.5  # the data set has not drifted (each feature alone: ~5% false alarms)
