"""Settings from ``FREESTEMS_*`` variables: each type parsed, every bad value one line naming its variable,
the rules over several fields, the Modal deployment's settings, and ``freestems serve`` refusing to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import freestems
from freestems.cli import build_parser
from freestems.cost import DEFAULT_GPU_PRICES
from freestems.deploy.settings import ModalSettings
from freestems.engine import DEVICES, PRECISIONS
from freestems.models import ModelChoiceError, check_model_choice
from freestems.service import ServiceError, Settings, SettingsError


def test_each_type_is_read_from_its_variable(tmp_path):
    environ = {
        "FREESTEMS_TRUST_PROXY": "On",  # bool
        "FREESTEMS_RESULT_CACHE": "no",
        "FREESTEMS_PORT": " 9000 ",  # int, stripped
        "FREESTEMS_MAX_UPLOAD_MB": "2.5",  # float
        "FREESTEMS_DATA_DIR": "~/stems-data",  # path, ~ expanded
        "FREESTEMS_MODEL_FILE": str(tmp_path / "m.ckpt"),
        "FREESTEMS_MODEL_CONFIG": str(tmp_path / "m.yaml"),
        "FREESTEMS_ALLOWED_ORIGINS": "https://a.example, ,https://b.example/",  # tuple: comma list
        "FREESTEMS_ALLOWED_HOSTS": "stems.example.org,*.example.net",
        "FREESTEMS_GPU_PRICES": "L4=0.0003, B200=0.0015",  # dict: entries replace the defaults
        "FREESTEMS_DEVICE": "cpu",  # Literal
        "FREESTEMS_AUTH": "none",
        "FREESTEMS_HMAC_SECRET": "s3cret",  # str
        "FREESTEMS_REATTACH_GRACE": "12.5",
    }
    settings = Settings.from_env(environ)
    assert settings.trust_proxy is True and settings.result_cache is False
    assert settings.port == 9000 and settings.max_upload_mb == 2.5 and settings.max_upload_bytes == 2_500_000
    assert settings.data_dir == Path.home() / "stems-data"
    assert settings.model_file == tmp_path / "m.ckpt" and settings.model_config_file == tmp_path / "m.yaml"
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.hosts == ("stems.example.org", "*.example.net")
    assert settings.gpu_prices == {**DEFAULT_GPU_PRICES, "L4": 0.0003, "B200": 0.0015}
    assert settings.device == "cpu" and settings.auth == "none" and not settings.auth_required
    assert settings.hmac_secret == "s3cret" and settings.reattach_grace == 12.5


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("yes", True), ("TRUE", True), ("off", False), ("0", False)]
)
def test_booleans_take_the_usual_words(raw, value):
    assert Settings.from_env({"FREESTEMS_RESULT_CACHE": raw}).result_cache is value


def test_blank_and_foreign_variables_are_ignored_and_overrides_win(monkeypatch):
    environ = {"FREESTEMS_PORT": "  ", "FREESTEMS_WORKERS": "", "PORT": "1", "FREESTEMS_NOT_A_SETTING": "x"}
    settings = Settings.from_env(environ, workers=3, host=None)
    assert (settings.port, settings.workers, settings.host) == (8000, 3, "127.0.0.1")
    assert settings.reattach_grace == 30.0
    monkeypatch.setenv("FREESTEMS_PORT", "1234")
    assert Settings.from_env().port == 1234  # os.environ by default...
    assert Settings().port == 8000 and Settings.from_env({}).port == 8000  # ...and only from_env reads it


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("FREESTEMS_PORT", "eighty", "must be a whole number, got 'eighty'"),
        ("FREESTEMS_PORT", "70000", "must be at most 65535"),
        ("FREESTEMS_MAX_DURATION", "long", "must be a number"),
        ("FREESTEMS_TRUST_PROXY", "maybe", "expected on/off, true/false, yes/no or 1/0"),
        ("FREESTEMS_DEVICE", "tpu", "must be one of auto, cpu, cuda, mps, got 'tpu'"),
        ("FREESTEMS_AUTH", "password", "must be one of pow, none"),
        ("FREESTEMS_POW_ALGORITHM", "MD5", "must be one of PBKDF2/SHA-256"),
        ("FREESTEMS_WORKERS", "0", "must be at least 1, got '0'"),
        ("FREESTEMS_THREADS", "-1", "must be at least 0"),
        ("FREESTEMS_MAX_CONNECTIONS", "-1", "must be at least 0"),
        ("FREESTEMS_SESSION_TTL", "-5", "must be positive"),
        ("FREESTEMS_REATTACH_GRACE", "0", "must be positive"),
        ("FREESTEMS_ALLOWED_ORIGINS", "example.org", "'example.org' is not an origin"),
        ("FREESTEMS_ALLOWED_HOSTS", "example.org:443", "'example.org:443' is not a host"),
        ("FREESTEMS_GPU_PRICES", "L4:0.0003", "'L4:0.0003' is not TYPE=dollars_per_second"),
        ("FREESTEMS_GPU_PRICES", "L4=-1", "'L4=-1' is not TYPE=dollars_per_second"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name, value, reason):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert f"{name}: {reason}" in message
    assert "\n" not in message and "pydantic" not in message


def test_values_given_in_code_are_checked_alike():
    with pytest.raises(SettingsError, match=r"FREESTEMS_PORT: must be at most 65535, got 70000$"):
        Settings(port=70000)
    with pytest.raises(SettingsError, match=r"FREESTEMS_GPU_PRICES\[L4\]: must be at least 0"):
        Settings(gpu_prices={"L4": -1.0})
    with pytest.raises(SettingsError, match="FREESTEMS_NOPE: unknown setting"):
        Settings.from_env({}, nope=1)
    with pytest.raises(SettingsError) as caught:  # every problem, on one line
        Settings.from_env({"FREESTEMS_PORT": "x", "FREESTEMS_WORKERS": "0"})
    assert "FREESTEMS_PORT" in str(caught.value) and "FREESTEMS_WORKERS" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_settings_are_immutable_and_replace_checks_the_change(tmp_path):
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    assert settings.replace(workers=4).workers == 4 and settings.workers == 1
    assert settings.replace(workers=4).data_dir == tmp_path
    with pytest.raises(SettingsError, match="FREESTEMS_WORKERS"):
        settings.replace(workers=0)


def test_a_settings_error_is_a_startup_error_not_an_http_one():
    assert not issubclass(SettingsError, ServiceError) and issubclass(SettingsError, ValueError)


def test_no_keys_on_a_public_address_needs_saying_so(tmp_path):
    with pytest.raises(SettingsError, match="FREESTEMS_ALLOW_PUBLIC_NOAUTH") as caught:
        Settings.from_env({"FREESTEMS_AUTH": "none", "FREESTEMS_HOST": "0.0.0.0"})
    assert "FREESTEMS_AUTH=none" in str(caught.value)
    public = {"FREESTEMS_AUTH": "none", "FREESTEMS_HOST": "0.0.0.0", "FREESTEMS_ALLOW_PUBLIC_NOAUTH": "1"}
    assert Settings.from_env(public).auth == "none"
    for host in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"):
        assert Settings(host=host, auth="none").is_loopback
    assert Settings(host="0.0.0.0").auth_required  # keys (the default) are fine anywhere
    with pytest.raises(SettingsError, match="ALLOW_PUBLIC_NOAUTH"):
        Settings(host="127.0.0.1", auth="none").replace(host="192.0.2.1")


def test_a_model_or_a_model_file_not_both(tmp_path):
    with pytest.raises(SettingsError, match="give either FREESTEMS_MODEL or FREESTEMS_MODEL_FILE, not both"):
        Settings.from_env({"FREESTEMS_MODEL": "scnet", "FREESTEMS_MODEL_FILE": str(tmp_path / "m.ckpt")})
    with pytest.raises(SettingsError, match="FREESTEMS_MODEL_CONFIG needs FREESTEMS_MODEL_FILE"):
        Settings.from_env({"FREESTEMS_MODEL_CONFIG": str(tmp_path / "m.yaml")})
    with pytest.raises(ModelChoiceError, match="give either -m/--model or --model-file, not both"):
        check_model_choice("scnet", Path("m.ckpt"), None)
    with pytest.raises(ModelChoiceError, match="--model-config needs --model-file"):
        check_model_choice(None, None, Path("m.yaml"))
    check_model_choice("scnet", Path("m.ckpt"), None, name_with_file=True)  # the library's catalog config


def test_the_device_and_precision_lists_are_the_engines():
    assert get_args(Settings.model_fields["device"].annotation) == DEVICES
    assert get_args(ModalSettings.model_fields["modal_precision"].annotation) == PRECISIONS
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    device = next(action for action in commands["separate"]._actions if action.dest == "device")
    assert tuple(device.choices) == DEVICES


# ---------------------------------------------------------------------------------------------- Modal


def test_modal_settings_defaults_and_variables():
    modal = ModalSettings()
    assert (modal.modal_app_name, modal.modal_gpu, modal.modal_region) == ("freestems", "L4", ())
    assert (modal.modal_scaledown_window, modal.modal_max_containers, modal.modal_timeout) == (10, 10, 900)
    assert (modal.modal_cpu, modal.modal_gpu_snapshot, modal.modal_precision) == (4.0, False, "auto")
    assert (modal.modal_secret_name, modal.modal_web_max_inputs) == ("freestems", 500)
    # The CUDA 12.6 build: Modal's driver (575.57.08) runs CUDA 12.x wheels, not PyPI's CUDA 13.0 one.
    assert modal.modal_torch == "torch==2.13.0"
    assert modal.modal_torch_index == "https://download.pytorch.org/whl/cu126"
    assert (modal.modal_tier, modal.modal_memory, modal.modal_lease_seconds) == ("gpu", 4096, 30)
    assert (modal.modal_cpu_class_cpu, modal.modal_cpu_class_memory) == (2.0, 3072)
    assert (modal.modal_cpu_max_containers, modal.modal_cpu_scaledown_window) == (20, 5)
    assert modal.modal_overflow_backlog == 2
    assert not Settings.variables() & ModalSettings.variables()
    assert "FREESTEMS_MODAL_GPU" in ModalSettings.variables()
    assert "FREESTEMS_MODEL_CONFIG" in Settings.variables()
    assert "FREESTEMS_GPU_PRICES" in Settings.variables()  # the service prices its own usage records


def test_modal_settings_from_the_environment():
    environ = {
        "FREESTEMS_MODAL_GPU": " A10G ",
        "FREESTEMS_MODAL_REGION": "us-east, us-west",
        "FREESTEMS_MODAL_GPU_SNAPSHOT": "yes",
        "FREESTEMS_MODAL_CPU": "6",
        "FREESTEMS_MODAL_PRECISION": "bf16",
        "FREESTEMS_PORT": "not read here",
    }
    modal = ModalSettings.from_env(environ)
    assert (modal.modal_gpu, modal.modal_region) == ("A10G", ("us-east", "us-west"))
    assert modal.modal_gpu_snapshot is True and modal.modal_cpu == 6.0 and modal.modal_precision == "bf16"
    assert Settings.from_env({"FREESTEMS_MODAL_GPU": "not read here"}).port == 8000


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("FREESTEMS_MODAL_SCALEDOWN_WINDOW", "1", "must be at least 2"),
        ("FREESTEMS_MODAL_SCALEDOWN_WINDOW", "3601", "must be at most 3600"),
        ("FREESTEMS_MODAL_TIMEOUT", "5", "must be at least 10"),
        ("FREESTEMS_MODAL_MAX_CONTAINERS", "0", "must be at least 1"),
        ("FREESTEMS_MODAL_CPU", "0", "must be positive"),
        ("FREESTEMS_MODAL_PRECISION", "fp8", "must be one of auto, fp32, fp16, bf16"),
        ("FREESTEMS_MODAL_GPU_SNAPSHOT", "sometimes", "expected on/off"),
        ("FREESTEMS_MODAL_TIER", "tpu", "must be one of gpu, cpu, overflow"),
        ("FREESTEMS_MODAL_MEMORY", "64", "must be at least 128"),
        ("FREESTEMS_MODAL_LEASE_SECONDS", "1", "must be at least 2"),
        ("FREESTEMS_MODAL_OVERFLOW_BACKLOG", "0", "must be at least 1"),
    ],
)
def test_bad_modal_settings_name_the_variable(name, value, reason):
    with pytest.raises(SettingsError) as caught:
        ModalSettings.from_env({name: value})
    assert f"{name}: {reason}" in str(caught.value)
    with pytest.raises(SettingsError, match="FREESTEMS_MODAL_GPU: must not be empty"):
        ModalSettings(modal_gpu="  ")


# ---------------------------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("variable", "phrase"),
    [
        ("FREESTEMS_PORT=eighty", "freestems: FREESTEMS_PORT: must be a whole number, got 'eighty'"),
        ("FREESTEMS_DEVICE=tpu", "freestems: FREESTEMS_DEVICE: must be one of auto, cpu, cuda, mps"),
    ],
)
def test_freestems_serve_stops_with_one_line_on_a_bad_variable(tmp_path, variable, phrase):
    name, _, value = variable.partition("=")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(Path(freestems.__file__).parents[1]),  # this tree's package
        "FREESTEMS_DATA_DIR": str(tmp_path / "data"),
        name: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "freestems.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(phrase), result.stderr
