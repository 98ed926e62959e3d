"""deploy/prometheus and deploy/grafana: promtool checks the alert rules and runs their unit tests; every query of the
rules and the dashboard parses, names only metrics and labels that a real `aiprod serve` exposes (whose scrape promtool
lints), and picks out the service's real routes."""
import json, re, shutil, subprocess, time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aiprod.predict import load
from aiprod.serve import OPEN_PATHS, create_app, make_service
from test_serve import b64, png, serving

ROOT = Path(__file__).parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "aiprod.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="no promtool on this machine (`make promtool` installs Debian's prometheus package)")
# Grafana's variables, as it fills them in for the last hour with every model selected
GRAFANA = {"$__rate_interval": "1m", "$__range": "1h", "$model": ".*"}
# labels that Prometheus adds when it scrapes, and the buckets' bound
SCRAPE_LABELS = {"job", "instance", "le"}
METRIC = re.compile(r"(?<![\w:$])(aiprod_\w+)(?![\w:])\s*(\{[^}]*\})?")


def promtool(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    "promtool ARGS, its output captured."
    return subprocess.run([PROMTOOL, *args], input=input, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    "Every recording and alerting rule of deploy/prometheus/alerts.yml."
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> dict[str, str]:
    "Each dashboard query, named by its panel and refId, with Grafana's variables filled in."
    queries = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA.items(): expr = expr.replace(variable, value)
            queries[f"{panel['title']} {target['refId']}"] = expr
    return queries


def queries() -> dict[str, str]:
    "Every PromQL expression under deploy/: the rules' and the dashboard's."
    return {**{rule.get("record") or rule["alert"]: rule["expr"] for rule in rules()}, **dashboard_queries()}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    "The aiprod metrics an expression reads, each with the label names it matches on."
    return [(name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))) for name, matchers in METRIC.findall(expr)]


def grouping_labels(expr: str) -> set[str]:
    "The labels named in an expression's `by (...)` and `without (...)` clauses."
    return {label.strip() for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in clause.split(",") if label.strip()}


def scrape(client: httpx.Client) -> tuple[str, dict[str, set[str]]]:
    "The server's /metrics text, and each sample name in it with the label names it carries."
    text, samples = client.get("/metrics").text, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples: samples.setdefault(sample.name, set()).update(sample.labels)
    return text, samples


def endpoint_patterns(operator: str) -> set[str]:
    "The patterns of every `endpoint` matcher with `operator` (=~ or !~) in the rules and the dashboard."
    return {p for expr in queries().values() for p in re.findall(rf'endpoint\s*{operator}\s*"([^"]*)"', expr)}


@needs_promtool
def test_promtool_checks_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0 and f"SUCCESS: {len(rules())} rules found" in done.stdout, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_fire_every_alert_and_keep_healthy_traffic_quiet():
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    # every alert is seen firing in some test and held quiet in another
    checks = [check for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for check in test.get("alert_rule_test", [])]
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {c["alertname"] for c in checks if c.get("exp_alerts")} == alerts
    assert {c["alertname"] for c in checks if not c.get("exp_alerts")} == alerts


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path):
    # promtool has no command for a bare expression: each query becomes a recording rule, which it parses
    recorded = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_queries().values())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    done = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_reads_prometheus_through_its_variables():
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["model"]["query"]["query"] == "label_values(aiprod_model_info, model)"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and board["schemaVersion"] >= 39
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and panel["targets"], panel["title"]
    drawn = {name for expr in dashboard_queries().values() for name, _ in selectors(expr)}
    assert {"aiprod_requests_total", "aiprod_request_duration_seconds_bucket", "aiprod_queue_depth", "aiprod_drifted_share",
            "aiprod_drift_score", "aiprod_prediction_log_dropped_total", "aiprod_feedback_total", "aiprod_model_info"} <= drawn


def test_endpoint_patterns_pick_out_the_prediction_routes_and_leave_out_probes_and_scrapes(digits_bundle):
    paths = create_app(make_service([load(digits_bundle[0])])).openapi()["paths"]
    predictions = {path for path, methods in paths.items() if "post" in methods and re.search(r"/(predict|infer)$", path)}
    assert "/predict" in predictions and len(predictions) >= 3  # /predict and the V2 protocol's infer routes
    for pattern in endpoint_patterns("=~"):  # Prometheus's patterns are anchored at both ends, as fullmatch is
        assert {path for path in paths if re.fullmatch(pattern, path)} == predictions, pattern
    for pattern in endpoint_patterns("!~"):
        assert {path for path in paths if re.fullmatch(pattern, path)} == OPEN_PATHS, pattern


def test_a_real_server_exposes_every_metric_and_label_the_rules_and_dashboard_name(digits_bundle, tmp_path):
    folder, images = digits_bundle[0], [png(x) for x in digits_bundle[1].x[:16]]
    used = [(name, labels) for expr in queries().values() for name, labels in selectors(expr)]
    used.append(("aiprod_model_info", {"model"}))  # the dashboard's `model` variable
    grouped = {label for expr in queries().values() for label in grouping_labels(expr)} - SCRAPE_LABELS
    with serving(folder, "--log-dir", tmp_path / "logs", "--access-log", "off") as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        predicted = client.post("/predict", json={"inputs": [b64(data) for data in images]})
        assert predicted.status_code == 200, predicted.text
        infer = {"inputs": [{"name": "input", "shape": [4], "datatype": "BYTES", "data": [b64(data) for data in images[:4]]}]}
        assert client.post(f"/v2/models/{predicted.json()['model']}/infer", json=infer).status_code == 200
        assert client.post("/predict", json={"inputs": ["not base64!"]}).status_code == 422
        feedback = {"request_id": predicted.headers["x-request-id"], "label": predicted.json()["predictions"][0]["label"]}
        assert client.post("/feedback", json=feedback).status_code in (200, 201)
        # the drift gauges are recomputed every few seconds: scrape until every name is there, for up to 30 s
        deadline = time.monotonic() + 30
        while True:
            text, samples = scrape(client)
            missing = sorted({name for name, _ in used} - set(samples))
            if not missing or time.monotonic() > deadline: break
            time.sleep(0.5)
    assert missing == [], f"not exposed by aiprod serve: {missing}"
    for name, labels in used:
        assert labels - SCRAPE_LABELS <= samples[name], f"{name} has no label {labels - SCRAPE_LABELS - samples[name]}"
    assert grouped <= set().union(*samples.values()), f"grouped by labels no metric has: {grouped - set().union(*samples.values())}"
    if PROMTOOL:
        linted = promtool("check", "metrics", input=text)
        assert linted.returncode == 0, linted.stdout + linted.stderr
