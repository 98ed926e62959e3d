"""deploy/: the Dockerfile's command and healthcheck, run as plain processes on a real bundle, serve it and drain on
SIGTERM; the Kubernetes manifests agree with the image and with the service's real endpoints and drain time."""
import base64, io, json, os, re, shutil, signal, subprocess, sys, urllib.error, urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aiprod.predict import load
from aiprod.serve import Limits, create_app, make_service
from conftest import BIN, wait_for

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBECTL = shutil.which("kubectl")


def dockerfile() -> dict[str, list[str]]:
    "The Dockerfile's instructions: name → the arguments of each, in order (continuation lines joined, comments dropped)."
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    instructions = {}
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        if line.strip():
            name, _, arguments = line.strip().partition(" ")
            instructions.setdefault(name.upper(), []).append(arguments.strip())
    return instructions


def exec_form(arguments: str) -> list[str]:
    "An instruction's exec form, a JSON array: the shell form would put /bin/sh between Docker's SIGTERM and aiprod."
    argv = json.loads(arguments)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), arguments
    return argv


def image() -> dict:
    "What the image runs: its command line, healthcheck command, port, bundle volume and user."
    docker = dockerfile()
    [entrypoint], [cmd], [volume], [port], [user] = (docker[k] for k in ("ENTRYPOINT", "CMD", "VOLUME", "EXPOSE", "USER"))
    options = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])", docker["HEALTHCHECK"][-1])
    return {"command": exec_form(entrypoint) + exec_form(cmd), "healthcheck": exec_form(options[2]), "port": int(port),
            "volume": volume, "user": user}


def manifests() -> dict[str, dict]:
    "The objects of every YAML file under deploy/kubernetes, by kind (one of each)."
    objects = {}
    for path in sorted(KUBERNETES.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in objects, f"{path}: a second {doc['kind']}"
            objects[doc["kind"]] = doc
    return objects


def container(deployment: dict) -> dict:
    "The pod's one container."
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def container_port(deployment: dict, port) -> int:
    "`port` (a number, or a name of the container's ports) as a number."
    by_name = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    return by_name[port] if isinstance(port, str) else port


@pytest.fixture(scope="module")
def routes(digits_bundle) -> dict[str, set[str]]:
    "The served app's paths → their HTTP methods, from its OpenAPI schema."
    app = create_app(make_service([load(digits_bundle[0])]))
    return {path: set(methods) for path, methods in app.openapi()["paths"].items()}


def test_manifests_parse_and_the_kustomization_lists_them():
    objects = manifests()
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization", "Component"}
    listed = objects["Kustomization"]["resources"]
    assert sorted(listed) == sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {yaml.safe_load((KUBERNETES / name).read_text())["kind"] for name in listed} == {
        "Deployment", "Service", "HorizontalPodAutoscaler"}


def test_probes_and_metrics_scrape_name_real_endpoints(routes):
    deployment = manifests()["Deployment"]
    spec = container(deployment)
    probes = {name: spec[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    for path in [*(p["path"] for p in probes.values()), annotations["prometheus.io/path"]]:
        assert "get" in routes.get(path, ()), f"{path} is not a GET route of aiprod serve"
    ports = {container_port(deployment, p["port"]) for p in probes.values()} | {int(annotations["prometheus.io/port"])}
    assert ports == {image()["port"]}
    # the startup probe waits long enough for a large model (BERT) to load before liveness may restart the pod
    assert spec["startupProbe"]["periodSeconds"] * spec["startupProbe"]["failureThreshold"] >= 120


def test_service_and_autoscaler_point_at_the_deployment():
    objects = manifests()
    deployment, service, hpa = objects["Deployment"], objects["Service"], objects["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], container_port(deployment, port["targetPort"])) == ("http", 80, image()["port"])
    target = hpa["spec"]["scaleTargetRef"]
    assert (hpa["apiVersion"], target["apiVersion"], target["kind"], target["name"]) == (
        "autoscaling/v2", "apps/v1", "Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert (metric["resource"]["name"], metric["resource"]["target"]["type"]) == ("cpu", "Utilization")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count; apply would reset it"
    resources = container(deployment)["resources"]  # utilization is measured against the CPU request
    assert {kind: set(resources[kind]) for kind in ("requests", "limits")} == {"requests": {"cpu", "memory"}, "limits": {"cpu", "memory"}}


def test_grace_period_covers_the_pre_stop_sleep_and_aiprods_drain():
    deployment = manifests()["Deployment"]
    pod, sleep = deployment["spec"]["template"]["spec"], container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and float(sleep[1]) > 0
    drain = Limits().timeout_s + 5  # uvicorn's graceful shutdown in aiprod.serve: requests in flight get --timeout, + 5 s
    assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + drain


def test_pod_runs_as_the_images_user_with_a_read_only_root_and_the_bundle_mounted():
    deployment, built = manifests()["Deployment"], image()
    pod, spec = deployment["spec"]["template"]["spec"], container(deployment)
    uid = int(built["user"].split(":")[0])
    assert uid > 0 and pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert spec["securityContext"]["readOnlyRootFilesystem"] and not spec["securityContext"]["allowPrivilegeEscalation"]
    assert spec["image"] == "aiprod-serve:latest"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    bundle = mounts[built["volume"]]
    assert bundle["readOnly"] and volumes[bundle["name"]]["persistentVolumeClaim"]["readOnly"]
    assert spec["args"] == built["command"][built["command"].index(built["volume"]):], "args replace the image's CMD, the bundle"


def test_api_key_component_reads_the_key_from_a_mounted_secret():
    objects = manifests()
    [patch] = [yaml.safe_load(p["patch"]) for p in objects["Component"]["patches"]]
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", objects["Deployment"]["metadata"]["name"])
    spec, base = container(patch), container(objects["Deployment"])
    assert spec["name"] == base["name"]
    [key_file] = [e["value"] for e in spec["env"] if e["name"] == "AIPROD_API_KEY_FILE"]
    [mount] = [m for m in spec["volumeMounts"] if Path(key_file).parent == Path(m["mountPath"])]
    [volume] = [v for v in patch["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] and volume["secret"]["secretName"] and not volume["secret"].get("optional")
    # no key in any file: the image and manifests only name where it is mounted
    for path in [DEPLOY / "Dockerfile", *KUBERNETES.rglob("*.yaml")]:
        assert not re.search(r"AIPROD_API_KEY\b|kind: Secret", path.read_text()), path


@pytest.mark.skipif(not KUBECTL, reason="no kubectl on this machine: kustomize's own build of the manifests is not checked")
def test_kustomize_builds_the_manifests_with_and_without_the_api_key(tmp_path):
    base = os.path.relpath(KUBERNETES, tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [base], "components": [f"{base}/api-key"]}))
    for folder, key in ((KUBERNETES, False), (tmp_path, True)):
        done = subprocess.run([KUBECTL, "kustomize", folder], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        objects = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}
        assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
        env = {e["name"] for e in container(objects["Deployment"])["env"]}
        assert env >= {"HOME", "OMP_NUM_THREADS"} and ("AIPROD_API_KEY_FILE" in env) == key  # the patch adds, not replaces


def test_image_installs_cpu_torch_as_the_makefile_pins_it_then_aiprod():
    docker = dockerfile()
    assert docker["FROM"] == ["python:3.11-slim"]
    torch = re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    installs = [run for run in docker["RUN"] if "pip install" in run]
    assert f"pip install {torch} --index-url https://download.pytorch.org/whl/cpu" in installs[0]
    assert re.search(r"pip install \.(\s|$)", installs[1]), "aiprod without its dev extras"
    allowed = {line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {name.strip("./") for copy in docker["COPY"] for name in copy.split()[:-1]}
    assert copied <= allowed and all((ROOT / name).exists() for name in copied)


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    "The status and body of a GET, or with `body` a JSON POST."
    request = urllib.request.Request(url, body and json.dumps(body).encode(),
                                     {**(headers or {}), **({"Content-Type": "application/json"} if body else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response: return response.status, response.read()
    except urllib.error.HTTPError as e: return e.code, e.read()


def png(image: np.ndarray) -> bytes:
    "A (1, H, W) image in [0, 1] as a grayscale PNG file."
    buffer = io.BytesIO()
    Image.fromarray((image[0] * 255).round().astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_container_command_serves_the_bundle_and_drains_on_sigterm(digits_bundle, tmp_path):
    folder, images = digits_bundle[0], digits_bundle[1].x
    built = image()
    command, healthcheck = built["command"], built["healthcheck"]
    assert command[:2] == ["aiprod", "serve"] and built["volume"] in command
    assert command[command.index("--port") + 1] == str(built["port"]) and command[command.index("--host") + 1] == "0.0.0.0"
    # the image's command, as this environment runs it: its aiprod, the bundle's folder for the volume, and port 0 (a
    # free one, which the server prints); the key file stands for the secret the api-key component mounts
    argv = [str(BIN / "aiprod"), *command[1:]]
    argv[argv.index(built["volume"])], argv[argv.index("--port") + 1] = str(folder), "0"
    (tmp_path / "api-key").write_text("deploy-test-key\n")
    env = {**os.environ, "AIPROD_API_KEY_FILE": str(tmp_path / "api-key")}
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr, open(tmp_path / "access.log", "w") as stdout:
        server = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
    try:
        wait_for(lambda: "aiprod: serving on" in log.read_text() or server.poll() is not None, 120)
        listening = re.search(r"aiprod: serving on http://([\d.]+):(\d+)", log.read_text())
        assert listening and listening[1] == "0.0.0.0", log.read_text()
        base = f"http://127.0.0.1:{listening[2]}"

        def health() -> int:  # Docker's HEALTHCHECK, with this environment's Python and the server's port
            script = healthcheck[-1].replace(f":{built['port']}/", f":{listening[2]}/")
            return subprocess.run([sys.executable, *healthcheck[1:-1], script], capture_output=True, timeout=30).returncode

        assert healthcheck[0] == "python" and health() == 0
        wait_for(lambda: call(f"{base}/readyz")[0] == 200, 60)
        image_file = png(images[0])
        inputs = {"inputs": [base64.b64encode(image_file).decode()]}
        assert call(f"{base}/predict", inputs)[0] == 401
        status, body = call(f"{base}/predict", inputs, {"X-API-Key": "deploy-test-key"})
        assert status == 200, body
        [served] = json.loads(body)["predictions"]
        expected = load(folder).predict([image_file])
        assert served["label"] == expected.labels[0]
        assert np.allclose([served["probabilities"][c] for c in expected.classes], expected.probabilities[0], atol=1e-5)
        status, metrics = call(f"{base}/metrics")
        assert status == 200 and re.search(rb'^aiprod_predictions_total\{[^}]*model="digits-cnn"[^}]*\} 1\.0$', metrics, re.M)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=Limits().timeout_s + 10) == 0, log.read_text()
        assert health() != 0, "the healthcheck fails once nothing listens"
    finally:
        if server.poll() is None: server.kill(); server.wait()
