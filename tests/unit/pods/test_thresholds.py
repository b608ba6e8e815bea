"""Eviction thresholds parsed as the kubelet parses --eviction-hard/-soft/-soft-grace-period/
-minimum-reclaim, and the flags that carry them into Settings."""

import pytest

from vnode.cli import main
from vnode.config import SettingsError, load_settings
from vnode.pods.thresholds import (
    Amount,
    ThresholdError,
    format_bytes,
    format_duration,
    parse_duration,
    parse_quantity,
    parse_statements,
    parse_thresholds,
    quantity_bytes,
)

Mi = 1024 * 1024
BASE = {"kubeconfig": "/tmp/k", "host_ip": "198.18.0.2"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100Mi", 100 * Mi),
        ("1.5Gi", 1536 * Mi),
        ("1G", 10**9),
        ("500M", 5 * 10**8),
        ("2e9", 2 * 10**9),
        ("1E3", 1000),
        ("512", 512),
        ("1k", 1000),
        ("1Ki", 1024),
        ("0.5", 1),  # rounded up to a whole byte, as Value() does
        ("100m", 1),
        (" 80Mi ", 80 * Mi),
    ],
)
def test_quantities(text, expected):
    assert quantity_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "Mi", "100MB", "1.2.3", "ten", "100 Mi", "1e"])
def test_bad_quantities(text):
    with pytest.raises(ThresholdError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (500, "500"), (1000, "1k"), (1024, "1Ki"), (80 * Mi, "80Mi"), (1536 * Mi, "1536Mi"), (83886081, "83886081"),
     (3 * 1024**3, "3Gi")],
)
def test_format_bytes_like_the_api_server(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m", 300), ("5m0s", 300), ("1m30s", 90), ("300ms", 0.3), ("1h", 3600), ("2.5s", 2.5), ("3", 3), ("0", 0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "1x", "", "m"])
def test_bad_durations(text):
    with pytest.raises(ThresholdError):
        parse_duration(text)


def test_format_duration_is_go_spelling():
    assert [format_duration(s) for s in (300, 90, 3, 2.5, 0.3, 0, 3723)] == ["5m0s", "1m30s", "3s", "2.5s", "300ms", "0s", "1h2m3s"]


def test_statements_in_the_kubelet_map_syntax():
    assert parse_statements("memory.available<100Mi, nodefs.available<10%", sep="<") == {
        "memory.available": "100Mi", "nodefs.available": "10%"}
    assert parse_statements("memory.available=1m30s", sep="=") == {"memory.available": "1m30s"}
    assert parse_statements({"memory.available": "1Gi"}, sep="<") == {"memory.available": "1Gi"}  # config file mapping
    assert parse_statements("", sep="<") == {}
    with pytest.raises(ThresholdError, match="malformed"):
        parse_statements("memory.available=100Mi", sep="<")


def test_default_hard_threshold():
    (t,) = parse_thresholds(hard="memory.available<100Mi")
    assert t.signal == "memory.available" and t.value == Amount(text="100Mi", bytes=100 * Mi)
    assert t.grace_seconds == 0 and not t.soft and t.limit(16 * 1024 * Mi) == 100 * Mi


def test_percentages_are_of_capacity_and_0_100_are_ignored():
    (t,) = parse_thresholds(hard="memory.available<10%")
    assert t.value.fraction == pytest.approx(0.10) and t.limit(1000 * Mi) == 100 * Mi
    assert t.value.display(1000 * Mi) == "100Mi"
    assert parse_thresholds(hard="memory.available<0%") == []
    assert parse_thresholds(hard="memory.available<100%") == []


def test_soft_threshold_takes_its_grace_period_and_reclaims_apply_to_both():
    hard, soft = parse_thresholds(hard="memory.available<100Mi", soft="memory.available<1Gi",
                                  soft_grace_period="memory.available=1m30s", minimum_reclaim="memory.available=200Mi")
    assert (hard.soft, soft.soft, soft.grace_seconds) == (False, True, 90)
    assert hard.min_reclaim == soft.min_reclaim == Amount(text="200Mi", bytes=200 * Mi)
    assert soft.limit(0, with_reclaim=True) == 1224 * Mi
    assert soft.describe() == "soft memory.available<1Gi, grace period 1m30s, minimum reclaim 200Mi"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hard": "memory.available<0"}, "must be positive"),
        ({"hard": "memory.available<-1Mi"}, "must be positive"),
        ({"hard": "memory.available<150%"}, "must be <= 100%"),
        ({"hard": "memory.available<-5%"}, "must be >= 0%"),
        ({"hard": "memory.available<x%"}, "invalid eviction percentage"),
        ({"hard": "memory.available<lots"}, "quantities must match"),
        ({"hard": "nodefs.available<10%"}, "not supported on the Mac node"),
        ({"hard": "memory.free<1Gi"}, "unsupported eviction signal memory.free"),
        ({"hard": None, "soft": "memory.available<1Gi"}, "grace period must be specified"),
        ({"hard": None, "soft_grace_period": "memory.available=-1s"}, "must be a positive value"),
        ({"hard": None, "minimum_reclaim": "memory.available=0%"}, "minimum reclaim memory.available must be positive"),
        ({"hard": None, "minimum_reclaim": "memory.available=-1Mi"}, "negative eviction minimum reclaim"),
    ],
)
def test_refused_like_the_kubelet(kwargs, message):
    with pytest.raises(ThresholdError, match=message):
        parse_thresholds(**kwargs)


def test_settings_defaults_are_the_kubelets():
    s = load_settings(BASE)
    assert s.eviction_hard == "memory.available<100Mi"
    assert s.eviction_pressure_transition_period == 300 and s.eviction_max_pod_grace_period == 0
    assert s.eviction_monitoring_interval == 10 and s.eviction_signal_file is None
    assert [t.describe() for t in s.eviction_thresholds] == ["hard memory.available<100Mi"]


def test_settings_take_durations_and_empty_hard():
    s = load_settings({**BASE, "eviction_hard": "", "eviction_pressure_transition_period": "3s",
                       "eviction_monitoring_interval": "500ms"})
    assert s.eviction_thresholds == [] and s.eviction_pressure_transition_period == 3 and s.eviction_monitoring_interval == 0.5


def test_config_file_takes_kubelet_style_mappings(tmp_path):
    path = tmp_path / "vnode.yaml"
    path.write_text("eviction-soft: {memory.available: 2Gi}\neviction-soft-grace-period: {memory.available: 30s}\n")
    s = load_settings(BASE, config_file=path)
    assert s.eviction_soft == "memory.available<2Gi" and s.eviction_thresholds[1].grace_seconds == 30


def test_soft_without_grace_names_the_grace_flag():
    with pytest.raises(SettingsError, match=r"--eviction-soft-grace-period .*grace period must be specified"):
        load_settings({**BASE, "eviction_soft": "memory.available<1Gi"})


def test_bad_eviction_flag_exits_2_naming_it(capsys):
    code = main(["run", "--kubeconfig=/tmp/k", "--host-ip=198.18.0.2", "--eviction-hard=memory.available<lots"])
    err = capsys.readouterr().err
    assert code == 2 and "--eviction-hard" in err and err.count("\n") == 1
