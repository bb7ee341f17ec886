"""Command-line defaults and the worker's advertised address come from the typed settings (ditto.config)."""

from __future__ import annotations

import argparse

import pytest

from ditto_app.cli import add_model_args
from ditto_app.worker_cli import advertised_host


def _model_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return parser.parse_args(argv)


def test_model_option_defaults_follow_the_settings(monkeypatch):
    for name in ("WEIGHTS", "PROFILE", "DEVICE"):
        monkeypatch.delenv(f"DITTO_MODEL__{name}", raising=False)
    args = _model_args([])
    assert (args.weights, args.profile, args.device) == ("synthetic", "full", "auto")
    monkeypatch.setenv("DITTO_MODEL__PROFILE", "tiny")
    monkeypatch.setenv("DITTO_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("DITTO_MODEL__WEIGHTS", "/data/ditto")
    args = _model_args([])
    assert (args.weights, args.profile, args.device) == ("/data/ditto", "tiny", "cpu")
    assert _model_args(["--profile", "full"]).profile == "full"       # an option beats the environment


def test_an_invalid_setting_stops_the_command_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DITTO_MODEL__PROFILE", "huge")
    with pytest.raises(SystemExit, match="DITTO_MODEL__PROFILE"):
        _model_args([])


def test_advertised_host(monkeypatch):
    from ditto.config import load_settings

    monkeypatch.setenv("DITTO_ADVERTISE_HOST", "worker-1.stage.svc")
    settings = load_settings()
    assert advertised_host(settings.grpc_host, settings.advertise_host) == "worker-1.stage.svc"
    assert advertised_host("10.1.2.3") == "10.1.2.3"
    assert advertised_host("0.0.0.0") not in ("0.0.0.0", "")
