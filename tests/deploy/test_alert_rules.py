"""The alert rules (deploy/prometheus/alerts.yml): promtool accepts them, their unit tests
(alerts.test.yml) pass, a broken copy is refused, and a real Prometheus fires one of them on a
series of our own. Each alert tells the operator what to do.

promtool and Prometheus come from Debian's `prometheus` package (localinfra.prometheus
installs it on first use; a machine where it cannot be installed FAILS these tests).
"""

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from localinfra.prometheus import LocalPrometheus, promtool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
SERVICES = ("link-api", "registry", "imap-verifier", "oauth-broker")


@pytest.fixture(scope="module")
def promtool_path() -> str:
    try:
        return promtool()
    except Exception as exc:
        pytest.fail(f"promtool (Debian package prometheus) could not be installed: {exc}")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(promtool_path: str) -> None:
    checked = _run([promtool_path, "check", "rules", str(ALERTS)], PROMETHEUS_DIR)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_promtool_unit_tests_pass(promtool_path: str) -> None:
    tested = _run([promtool_path, "test", "rules", "alerts.test.yml"], PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_and_says_what_to_do() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in _rules():
        name = rule["alert"]
        assert name in tested, f"{name} never fires in alerts.test.yml"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert "for" in rule, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: say what to do"


def test_broken_rules_and_wrong_expectations_are_refused(
    promtool_path: str, tmp_path: Path
) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("sum by (job) (up", "sum by (job) (up[", 1))
    checked = _run([promtool_path, "check", "rules", str(broken)], tmp_path)
    assert checked.returncode != 0
    # An expectation that contradicts the rule (no dead-letter alert after a dead letter).
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    tests = (PROMETHEUS_DIR / "alerts.test.yml").read_text()
    wrong = tests.replace(
        "{eval_time: 4m, alertname: MailboxLinkDeadLetters",
        "{eval_time: 7m, alertname: MailboxLinkDeadLetters",
    )
    assert wrong != tests
    (tmp_path / "alerts.test.yml").write_text(wrong)
    tested = _run([promtool_path, "test", "rules", "alerts.test.yml"], tmp_path)
    assert tested.returncode != 0
    assert "MailboxLinkDeadLetters" in tested.stdout + tested.stderr


def test_example_scrape_config_names_the_jobs_the_alerts_expect(promtool_path: str) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(SERVICES)
    checked = _run([promtool_path, "check", "config", "prometheus.yml"], PROMETHEUS_DIR)
    assert checked.returncode == 0, checked.stdout + checked.stderr


class _FakeService(BaseHTTPRequestHandler):
    """Serves a /metrics text holding one dead letter, as a registry would after one."""

    dead_letters = 0

    def do_GET(self) -> None:
        body = (
            "# TYPE mailbox_link_dead_letters_total counter\n"
            'mailbox_link_dead_letters_total{service="registry",topic="t.link-requests",'
            f'reason="unreadable"}} {type(self).dead_letters}\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet."""


@pytest.fixture
def fake_service() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.connected
def test_a_real_prometheus_fires_the_dead_letter_alert(
    fake_service: ThreadingHTTPServer,
) -> None:
    port = fake_service.server_address[1]
    _FakeService.dead_letters = 0
    with LocalPrometheus({"registry": [f"127.0.0.1:{port}"]}, rule_files=[ALERTS]) as prometheus:
        prometheus.wait_for('up{job="registry"} == 1')
        # Scraped at 0 first, so the rise to 1 is an increase the rule sees.
        prometheus.wait_for('mailbox_link_dead_letters_total{job="registry"}')
        time.sleep(2)
        assert not prometheus.query('ALERTS{alertname="MailboxLinkDeadLetters"}')
        _FakeService.dead_letters = 1
        firing = prometheus.wait_for(
            'ALERTS{alertname="MailboxLinkDeadLetters", alertstate="firing"}', timeout=60
        )
        assert firing[0]["metric"]["topic"] == "t.link-requests"
        assert firing[0]["metric"]["severity"] == "warning"
