"""The monitoring files under deploy/: the Grafana dashboard, the Prometheus alerting rules
and the example scrape configuration.

Every PromQL expression may only name the metrics the gateway exports (the table below), with
their labels and label values. YAML is read with PyYAML when it is installed (it is not a
dependency); otherwise with the small reader below, which knows the block subset these files
are written in. promtool checks the files as well when it is on PATH.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "spendgate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
OUTCOMES = frozenset(
    {
        "forwarded",
        "auth_failed",
        "iam_denied",
        "limit_exceeded",
        "bad_request",
        "upstream_error",
        "unavailable",
    }
)


@dataclass(frozen=True)
class Metric:
    kind: str  # counter, gauge or histogram
    # label -> its possible values, or None where any value may occur
    labels: dict[str, frozenset[str] | None]


METRICS: dict[str, Metric] = {
    "spendgate_requests_total": Metric("counter", {"route": ROUTES, "outcome": OUTCOMES}),
    "spendgate_request_duration_seconds": Metric("histogram", {"route": ROUTES}),
    "spendgate_overhead_seconds": Metric("histogram", {"route": ROUTES}),
    "spendgate_upstream_duration_seconds": Metric("histogram", {"provider": None}),
    "spendgate_upstream_ttfb_seconds": Metric("histogram", {"provider": None}),
    "spendgate_spend_usd_total": Metric(
        "counter", {"provider": None, "model": None, "project": None}
    ),
    "spendgate_tokens_total": Metric(
        "counter",
        {"provider": None, "model": None, "kind": frozenset({"prompt", "completion"})},
    ),
    "spendgate_limit_rejections_total": Metric(
        "counter", {"limit": frozenset({"all_time", "recurring"})}
    ),
    "spendgate_iam_denials_total": Metric(
        "counter", {"rule_type": frozenset({"models", "providers", "pricing"})}
    ),
    "spendgate_usage_backlog": Metric("gauge", {}),
    "spendgate_ledger_writes_total": Metric("counter", {"result": frozenset({"ok", "error"})}),
    "spendgate_redis_errors_total": Metric("counter", {}),
    "spendgate_key_cache_total": Metric("counter", {"result": frozenset({"hit", "miss"})}),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> dict[str, str]:
    """Every series name an expression may use -> the metric it belongs to."""
    names: dict[str, str] = {}
    for name, metric in METRICS.items():
        if metric.kind == "histogram":
            names.update({name + suffix: name for suffix in HISTOGRAM_SUFFIXES})
        else:
            names[name] = name
    return names


SERIES = series_names()
NAME = re.compile(r"spendgate_[a-z_]+")
SELECTOR = re.compile(r"(spendgate_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
RATE_OF = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*(spendgate_[a-z_]+)")
ALTERNATIVES = re.compile(r"[A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)*")


def promql_problems(expr: str) -> list[str]:
    """What is wrong in `expr` against the metric table: unknown series, labels and values,
    grouping by a label none of its metrics has, rate() of a gauge, a quantile without le."""
    problems: list[str] = []
    used: list[str] = NAME.findall(expr)
    unknown = sorted({name for name in used if name not in SERIES})
    problems += [f"unknown metric {name}" for name in unknown]
    if not used:
        problems.append("names no spendgate metric")
    metrics = {SERIES[name] for name in used if name in SERIES}

    for match in SELECTOR.finditer(expr):
        series, matchers = match.group(1), match.group(2)
        if series not in SERIES:
            continue
        labels = METRICS[SERIES[series]].labels
        for label, op, value in MATCHER.findall(matchers):
            if label in TARGET_LABELS or (label == "le" and series.endswith("_bucket")):
                continue
            if label not in labels:
                problems.append(f"{series} has no label {label}")
                continue
            allowed = labels[label]
            if allowed is None or "$" in value:
                continue
            if op in ("=", "!="):
                values = [value]
            elif ALTERNATIVES.fullmatch(value):
                values = value.split("|")
            else:
                continue  # a real regex: not checked
            problems += [
                f"{series}: {label}={v!r} never occurs" for v in values if v not in allowed
            ]

    groupable = set(TARGET_LABELS)
    for metric in metrics:
        groupable |= METRICS[metric].labels.keys()
    if any(name.endswith("_bucket") for name in used):
        groupable.add("le")
    for match in GROUPING.finditer(expr):
        for label in (part.strip() for part in match.group(1).split(",")):
            if label and label not in groupable:
                problems.append(f"grouping by {label}, which none of {sorted(metrics)} has")

    for name in RATE_OF.findall(expr):
        if name in SERIES and METRICS[SERIES[name]].kind == "gauge":
            problems.append(f"rate/increase of the gauge {name}")

    if "histogram_quantile" in expr:
        if not any(name.endswith("_bucket") for name in used):
            problems.append("histogram_quantile without a _bucket series")
        for match in GROUPING.finditer(expr):
            if "le" not in {part.strip() for part in match.group(1).split(",")}:
                problems.append("histogram_quantile over an aggregation that drops le")
    return problems


def test_promql_problems_catches_mistakes() -> None:
    good = (
        "histogram_quantile(0.99, sum by (le, route) "
        '(rate(spendgate_overhead_seconds_bucket{job="spendgate"}[5m])))'
    )
    assert promql_problems(good) == []
    assert promql_problems("rate(spendgate_request_total[5m])") == [
        "unknown metric spendgate_request_total"
    ]
    assert promql_problems("up == 0") == ["names no spendgate metric"]
    assert "unknown metric spendgate_overhead_seconds" in promql_problems(
        "rate(spendgate_overhead_seconds[5m])"
    )
    assert promql_problems('spendgate_ledger_writes_total{result="errors"}') == [
        "spendgate_ledger_writes_total: result='errors' never occurs"
    ]
    assert promql_problems('spendgate_requests_total{outcome=~"forwarded|denied"}') == [
        "spendgate_requests_total: outcome='denied' never occurs"
    ]
    assert promql_problems("sum by (provider) (rate(spendgate_requests_total[5m]))") == [
        "grouping by provider, which none of ['spendgate_requests_total'] has"
    ]
    assert promql_problems("rate(spendgate_usage_backlog[5m])") == [
        "rate/increase of the gauge spendgate_usage_backlog"
    ]
    assert promql_problems(
        "histogram_quantile(0.5, sum by (route) (rate(spendgate_overhead_seconds_bucket[5m])))"
    ) == ["histogram_quantile over an aggregation that drops le"]


# --- YAML --------------------------------------------------------------------------------


def _pyyaml_loader() -> Callable[[str], object] | None:
    try:
        module = importlib.import_module("yaml")
    except ImportError:
        return None
    load: Callable[[str], object] = module.safe_load
    return load


@dataclass
class _Line:
    indent: int
    text: str  # without the indentation


def _scalar(text: str) -> str:
    if text.startswith('"'):
        value = json.loads(text)  # close enough to YAML's double-quoted escapes
        assert isinstance(value, str), text
        return value
    if text.startswith("'"):
        assert text.endswith("'") and len(text) >= 2, text
        return text[1:-1].replace("''", "'")
    assert not text.startswith(("{", "[", "&", "*", "!", "%", "@", "`")), (
        f"outside the YAML subset the fallback reader knows: {text!r}"
    )
    return text


def _block_scalar(raw: list[str], start: int, parent: int, style: str) -> tuple[str, int]:
    """A `|` or `>` scalar (with an optional - or + chomping indicator) whose lines start at
    raw[start] and are indented deeper than `parent`."""
    body: list[str] = []
    end = start
    indent: int | None = None
    while end < len(raw):
        line = raw[end]
        if line.strip():
            depth = len(line) - len(line.lstrip(" "))
            if depth <= parent:
                break
            indent = depth if indent is None else indent
            body.append(line[indent:])
        else:
            body.append("")
        end += 1
    while body and not body[-1]:
        body.pop()
    if style[0] == "|":
        text = "\n".join(body)
    else:  # folded: lines of one paragraph joined by spaces
        text = "\n".join(" ".join(p.split("\n")) for p in "\n".join(body).split("\n\n"))
    return text + ("" if style.endswith("-") else "\n"), end


def mini_yaml(text: str) -> object:
    """Read the block-style YAML subset of deploy/: mappings, sequences, plain and quoted
    scalars (all as strings), `|` and `>` scalars, full-line comments."""
    raw = text.splitlines()

    def next_line(i: int) -> tuple[_Line | None, int]:
        while i < len(raw):
            stripped = raw[i].strip()
            if stripped and not stripped.startswith("#"):
                assert "\t" not in raw[i][: len(raw[i]) - len(raw[i].lstrip())], raw[i]
                return _Line(len(raw[i]) - len(raw[i].lstrip(" ")), stripped), i
            i += 1
        return None, i

    def node(i: int, indent: int) -> tuple[object, int]:
        line, i = next_line(i)
        assert line is not None and line.indent == indent, f"line {i + 1}: bad indentation"
        if line.text == "-" or line.text.startswith("- "):
            return sequence(i, indent)
        return mapping(i, indent)

    def value_after(key_text: str, i: int, indent: int, in_sequence: bool) -> tuple[object, int]:
        rest = key_text.strip()
        if rest in ("|", "|-", "|+", ">", ">-", ">+"):
            return _block_scalar(raw, i + 1, indent, rest)
        if rest:
            return _scalar(rest), i + 1
        child, j = next_line(i + 1)
        if child is None or child.indent < indent:
            return None, j
        if child.indent == indent and not in_sequence and child.text.startswith("- "):
            return sequence(j, indent)  # "key:" followed by a sequence at the same indent
        if child.indent <= indent:
            return None, j
        return node(j, child.indent)

    def mapping(i: int, indent: int) -> tuple[dict[str, object], int]:
        result: dict[str, object] = {}
        while True:
            line, i = next_line(i)
            if line is None or line.indent < indent or line.text.startswith("- "):
                return result, i
            assert line.indent == indent, f"line {i + 1}: bad indentation"
            key, sep, rest = line.text.partition(":")
            assert sep and (not rest or rest.startswith(" ")), f"line {i + 1}: not key: value"
            key = _scalar(key.strip())
            assert key not in result, f"line {i + 1}: duplicate key {key}"
            result[key], i = value_after(rest, i, indent, in_sequence=False)

    def sequence(i: int, indent: int) -> tuple[list[object], int]:
        result: list[object] = []
        while True:
            line, i = next_line(i)
            if line is None or line.indent != indent or not line.text.startswith("-"):
                return result, i
            item = line.text[1:].lstrip(" ")
            if not item:
                value, i = value_after("", i, indent, in_sequence=True)
                result.append(value)
                continue
            key, sep, rest = item.partition(":")
            if sep and (not rest or rest.startswith(" ")) and not item.startswith(("'", '"')):
                # "- key: value": a mapping whose keys sit where `key` starts
                raw[i] = " " * (indent + len(line.text) - len(item)) + item
                value, i = mapping(i, indent + len(line.text) - len(item))
                result.append(value)
            else:
                result.append(_scalar(item))
                i += 1

    first, start = next_line(0)
    if first is None:
        return None
    value, end = node(start, first.indent)
    rest, _ = next_line(end)
    assert rest is None, f"line {end + 1}: unexpected content"
    return value


def load_yaml(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    load = _pyyaml_loader()
    return load(text) if load is not None else mini_yaml(text)


def test_mini_yaml_reads_the_subset() -> None:
    text = (
        "# comment\n"
        "a:\n"
        "  - name: x\n"
        "    items:\n"
        "      - '1'\n"
        '      - "two: 2"\n'
        "    expr: |\n"
        "      up\n"
        "        > 0\n"
        "  - name: y\n"
        "    text: >-\n"
        "      one\n"
        "      two\n"
        "\n"
        "      three\n"
        "b:\n"
        "- z\n"
        "c: plain: colon\n"
    )
    assert mini_yaml(text) == {
        "a": [
            {"name": "x", "items": ["1", "two: 2"], "expr": "up\n  > 0\n"},
            {"name": "y", "text": "one two\nthree"},
        ],
        "b": ["z"],
        "c": "plain: colon",
    }


@pytest.mark.parametrize("path", [ALERTS, PROMETHEUS], ids=lambda p: p.name)
def test_mini_yaml_agrees_with_pyyaml(path: Path) -> None:
    load = _pyyaml_loader()
    if load is None:
        pytest.skip("PyYAML is not installed")
    assert mini_yaml(path.read_text(encoding="utf-8")) == load(path.read_text(encoding="utf-8"))


# --- typed access ------------------------------------------------------------------------


def as_dict(value: object, where: str) -> dict[str, object]:
    assert isinstance(value, dict), f"{where}: expected a mapping, got {value!r}"
    assert all(isinstance(key, str) for key in value), where
    return {str(key): item for key, item in value.items()}


def as_list(value: object, where: str) -> list[object]:
    assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
    return value


def as_str(value: object, where: str) -> str:
    assert isinstance(value, str) and value.strip(), f"{where}: expected a string, got {value!r}"
    return value


# --- the dashboard -----------------------------------------------------------------------


def dashboard() -> dict[str, object]:
    data: object = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return as_dict(data, DASHBOARD.name)


def all_panels(board: dict[str, object]) -> Iterator[dict[str, object]]:
    """Top-level panels and those inside collapsed rows."""
    for value in as_list(board["panels"], "panels"):
        panel = as_dict(value, "panel")
        yield panel
        for inner in as_list(panel.get("panels", []), f"row {panel.get('title')}"):
            yield as_dict(inner, "panel in a row")


def targets(board: dict[str, object]) -> Iterator[tuple[str, dict[str, object]]]:
    for panel in all_panels(board):
        title = str(panel.get("title"))
        for target in as_list(panel.get("targets", []), title):
            yield title, as_dict(target, title)


def expressions(board: dict[str, object]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {title!r} target {target.get('refId')}", as_str(target["expr"], title))
        for title, target in targets(board)
    ]
    for variable in variables(board):
        if variable.get("type") == "query":
            query = variable["query"]
            text = as_dict(query, "query")["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", as_str(text, "variable query")))
    return found


def variables(board: dict[str, object]) -> list[dict[str, object]]:
    templating = as_dict(board["templating"], "templating")
    return [as_dict(v, "variable") for v in as_list(templating["list"], "templating.list")]


def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


VARIABLE_REF = re.compile(
    r"\$\{([A-Za-z_]\w*)(?:[:.][^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]"
)


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert as_str(board["title"], "title") and as_str(board["uid"], "uid")
    assert board.get("id") is None  # importable into any Grafana


def test_panel_ids_are_unique() -> None:
    ids: list[int] = []
    for panel in all_panels(dashboard()):
        assert isinstance(panel["id"], int), panel.get("title")
        ids.append(panel["id"])
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_panels_sit_on_the_grid_without_overlapping() -> None:
    board = dashboard()
    boxes: list[tuple[str, int, int, int, int]] = []
    for value in as_list(board["panels"], "panels"):
        panel = as_dict(value, "panel")
        title = str(panel.get("title"))
        pos = as_dict(panel["gridPos"], title)
        x, y, w, h = (pos[k] for k in ("x", "y", "w", "h"))
        assert isinstance(x, int) and isinstance(y, int), title
        assert isinstance(w, int) and isinstance(h, int), title
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 24, (title, pos)
        if panel["type"] == "row":
            assert (x, w, h) == (0, 24, 1), (title, pos)
        boxes.append((title, x, y, w, h))
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1 :]:
            overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
            assert not overlap, f"{a!r} and {b!r} overlap"


def test_every_panel_but_rows_queries_prometheus_through_the_variable() -> None:
    board = dashboard()
    for panel in all_panels(board):
        if panel["type"] == "row":
            continue
        title = str(panel.get("title"))
        assert as_list(panel.get("targets"), title), f"{title!r} has no query"
        sources = [panel["datasource"]] + [
            as_dict(t, title).get("datasource", panel["datasource"])
            for t in as_list(panel["targets"], title)
        ]
        for source in sources:
            assert as_dict(source, title) == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_template_variables() -> None:
    board = dashboard()
    by_name = {str(v["name"]): v for v in variables(board)}
    source = by_name["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    queries = dict(expressions(board))
    for name in ("instance", "project"):
        assert by_name[name]["type"] == "query"
        assert queries[f"variable {name}"].startswith("label_values(")
        assert queries[f"variable {name}"].endswith(f", {name})")


def test_every_referenced_variable_is_defined() -> None:
    board = dashboard()
    defined = {str(v["name"]) for v in variables(board)}
    referenced: set[str] = set()
    for text in strings(board):
        for match in VARIABLE_REF.finditer(text):
            name = next(group for group in match.groups() if group)
            if not name.startswith("__"):  # Grafana's own: $__rate_interval, $__range...
                referenced.add(name)
    assert referenced - defined == set()
    assert {"instance", "project", "DS_PROMETHEUS"} <= referenced


def test_dashboard_queries_use_only_exported_metrics() -> None:
    problems = [
        f"{where}: {problem}"
        for where, expr in expressions(dashboard())
        for problem in promql_problems(expr)
    ]
    assert problems == []


def test_dashboard_covers_every_metric() -> None:
    used = {SERIES[name] for _, expr in expressions(dashboard()) for name in NAME.findall(expr)}
    assert used == set(METRICS)


# --- the alerting rules ------------------------------------------------------------------

REQUIRED_ALERTS = {
    "SpendgateLedgerBacklogGrowing",
    "SpendgateRedisErrors",
    "SpendgateLedgerWriteFailures",
    "SpendgateHighOverhead",
    "SpendgateUpstreamErrors",
}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def alert_rules() -> list[dict[str, object]]:
    document = as_dict(load_yaml(ALERTS), ALERTS.name)
    rules: list[dict[str, object]] = []
    for group_value in as_list(document["groups"], "groups"):
        group = as_dict(group_value, "group")
        as_str(group["name"], "group name")
        rules += [as_dict(rule, "rule") for rule in as_list(group["rules"], "rules")]
    return rules


def test_alerts_are_complete() -> None:
    rules = alert_rules()
    assert {rule.get("alert") for rule in rules} == REQUIRED_ALERTS
    for rule in rules:
        name = as_str(rule["alert"], "alert")
        as_str(rule["expr"], name)
        assert DURATION.fullmatch(as_str(rule["for"], name)), name
        labels = as_dict(rule["labels"], name)
        assert labels["severity"] in ("info", "warning", "critical"), name
        annotations = as_dict(rule["annotations"], name)
        as_str(annotations["summary"], name)
        as_str(annotations["description"], name)


def test_redis_errors_are_critical() -> None:
    # The gateway fails closed: every request that needs Redis is refused.
    for rule in alert_rules():
        if rule["alert"] == "SpendgateRedisErrors":
            assert as_dict(rule["labels"], "labels")["severity"] == "critical"


def test_alert_expressions_use_only_exported_metrics() -> None:
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in promql_problems(as_str(rule["expr"], str(rule["alert"])))
    ]
    assert problems == []


# --- the scrape configuration ------------------------------------------------------------


def test_prometheus_config_scrapes_spendgate_and_loads_the_alerts() -> None:
    config = as_dict(load_yaml(PROMETHEUS), PROMETHEUS.name)
    rule_files = [as_str(f, "rule_files") for f in as_list(config["rule_files"], "rule_files")]
    assert (PROMETHEUS.parent / "alerts.yml").name in rule_files
    assert all((PROMETHEUS.parent / f).is_file() for f in rule_files)
    jobs = {
        str(job["job_name"]): job
        for job in (as_dict(j, "scrape") for j in as_list(config["scrape_configs"], "scrape"))
    }
    job = jobs["spendgate"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [
        as_str(target, "target")
        for static in as_list(job["static_configs"], "static_configs")
        for target in as_list(as_dict(static, "static_config")["targets"], "targets")
    ]
    assert len(targets) >= 2 and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)


# --- promtool, when installed ------------------------------------------------------------


def promtool(*args: str, cwd: Path) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not on PATH")
    done = subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)


def test_promtool_checks_the_config() -> None:
    promtool("check", "config", PROMETHEUS.name, cwd=PROMETHEUS.parent)


# Grafana's variables replaced by values Prometheus accepts, to parse the queries.
GRAFANA_VALUES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}


def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    rules = []
    for n, (_, expr) in enumerate(expressions(dashboard())):
        if expr.startswith("label_values("):
            continue  # Grafana's, not PromQL
        for variable, value in GRAFANA_VALUES.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    # JSON is YAML: no YAML writer needed.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path.name, cwd=tmp_path)
