"""The operators' docs name what the code has (issue 16, "Done when"): deploy/README.md lists
every metric declared in mailbox_link_shared.metrics and every alert of
deploy/prometheus/alerts.yml, and names no metric or alert that does not exist; the root
README points at those sections and says how to turn tracing on. No server is needed.
"""

import re
from pathlib import Path

import yaml

from mailbox_link_shared import metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_README = ROOT / "deploy" / "README.md"
ROOT_README = ROOT / "README.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# A metric name as a table cell or inline code: `mailbox_link_...`, not a query's suffix.
METRIC_CELL = re.compile(r"^\| `(mailbox_link_[a-z_]+)` \|", re.MULTILINE)
# Not a package or a path: mailbox_link_shared.topics, shared/src/mailbox_link_shared/.
METRIC_NAME = re.compile(r"(?<![\w./])mailbox_link_[a-z_]+(?![\w./])")
ALERT_CELL = re.compile(r"^\| (MailboxLink[A-Za-z]+) \|", re.MULTILINE)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _declared_metrics() -> set[str]:
    return {spec.name for spec in metrics.SPECS}


def _alerts() -> set[str]:
    document = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"]}


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = text.find("\n### ", start + len(heading))
    return text[start : following if following != -1 else len(text)]


def _base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in _declared_metrics():
            return name.removesuffix(suffix)
    return name


def test_deploy_readme_metrics_table_lists_every_declared_metric() -> None:
    table = _section(DEPLOY_README.read_text(), "### The metrics")
    listed = METRIC_CELL.findall(table)
    assert len(listed) == len(set(listed)), "a metric is listed twice"
    assert set(listed) == _declared_metrics()


def test_every_metric_name_in_the_docs_exists() -> None:
    declared = _declared_metrics()
    for readme in (DEPLOY_README, ROOT_README):
        named = {_base_name(name) for name in METRIC_NAME.findall(readme.read_text())}
        # "mailbox_link_*" in prose is a wildcard, not a name.
        unknown = {name for name in named if not name.endswith("_")} - declared
        assert not unknown, f"{readme.relative_to(ROOT)} names metrics that do not exist"


def test_deploy_readme_lists_every_alert_and_no_other() -> None:
    table = _section(DEPLOY_README.read_text(), "### Alerts")
    listed = ALERT_CELL.findall(table)
    assert len(listed) == len(set(listed)), "an alert is listed twice"
    assert set(listed) == _alerts()


def test_docs_say_how_to_turn_tracing_on_and_where_the_lists_are() -> None:
    deploy = _section(DEPLOY_README.read_text(), "### Traces: OpenTelemetry")
    assert "To turn tracing on" in deploy
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in deploy
    assert "mailbox-link-otlp" in deploy
    root = ROOT_README.read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in root
    headings = {
        "the-metrics": "### The metrics",
        "alerts-deployprometheusalertsyml": "### Alerts (`deploy/prometheus/alerts.yml`)",
        "traces-opentelemetry": "### Traces: OpenTelemetry",
        "health-livez-and-readyz": "### Health: `/livez` and `/readyz`",
        "metrics-metrics": "### Metrics: `/metrics`",
    }
    for anchor, heading in headings.items():
        assert f"deploy/README.md#{anchor}" in root, anchor
        assert heading in DEPLOY_README.read_text(), heading
