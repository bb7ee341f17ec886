"""Write deploy/observability/prometheusrule.yaml (for the Prometheus Operator) from alerts.rules.yml.

The plain rules file is the one source: promtool checks and unit-tests it, and a Prometheus without the operator
loads it as it is. The PrometheusRule carries the same groups:

    python deploy/tools/gen_prometheusrule.py          # rewrite the file
    python deploy/tools/gen_prometheusrule.py --check  # exit 1 when it is stale (the tests do this too)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from generated import write_or_check

HERE = Path(__file__).resolve().parents[1] / "observability"
RULES = HERE / "alerts.rules.yml"
OUTPUT = HERE / "prometheusrule.yaml"
HEADER = ("# Written by deploy/tools/gen_prometheusrule.py from alerts.rules.yml (the one source of these rules):\n"
          "# edit that file, then run the script.\n")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # multi-line expressions stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict]) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ditto-alerts", "labels": {"app.kubernetes.io/part-of": "ditto"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return HEADER + yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(__file__, OUTPUT, render, argv)


if __name__ == "__main__":
    sys.exit(main())
