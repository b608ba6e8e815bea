"""Settings and flags: bad input is one line naming the flag, exit 2."""

import pytest

from vnode.cli import main
from vnode.config import SettingsError, load_settings

BASE = {"kubeconfig": "/tmp/k", "host_ip": "198.18.0.2"}


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--memory-fraction=1.5"], "--memory-fraction"),
        (["--host-ip=127.0.0.1"], "--host-ip"),
        (["--host-ip=not-an-ip"], "--host-ip"),
        (["--kubelet-port=70000"], "--kubelet-port"),
        (["--node-name=Bad_Name"], "--node-name"),
        (["--log-format=xml"], "--log-format"),
        (["--label=node-role.kubernetes.io/worker=x"], "--labels"),
    ],
)
def test_bad_flag_is_one_line_naming_it(capsys, argv, flag):
    code, err = run(capsys, "run", "--kubeconfig=/tmp/k", "--host-ip=198.18.0.2", *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def test_missing_required(capsys):
    code, err = run(capsys, "run")
    assert code == 2 and "--kubeconfig" in err and "--host-ip" in err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-flag"])
    assert exc.value.code == 2


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("vnode ")


def test_precedence_flags_env_file(tmp_path, monkeypatch):
    cfg = tmp_path / "vnode.yaml"
    cfg.write_text("kubeconfig: /from/file\nhost-ip: 198.18.0.9\nmax_pods: 7\nmemory_fraction: 0.6\n")
    monkeypatch.setenv("VNODE_MAX_PODS", "9")
    s = load_settings({"memory_fraction": "0.5"}, config_file=cfg)
    assert str(s.kubeconfig) == "/from/file" and str(s.host_ip) == "198.18.0.9"
    assert s.max_pods == 9 and s.memory_fraction == 0.5


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(BASE, config_file=bad)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(BASE, config_file=tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("memroy_fraction: 0.5\n")
    with pytest.raises(SettingsError, match="unknown setting 'memroy_fraction'"):
        load_settings(BASE, config_file=typo)


def test_credential_flags_reach_the_settings():
    from vnode.cli import build_parser

    args = vars(build_parser().parse_args(["run", "--kubeconfig=/tmp/k", "--host-ip=198.18.0.2",
                                           "--require-node-identity", "--no-rotate-certificates"]))
    s = load_settings({k: v for k, v in args.items() if k not in ("command", "config")})
    assert s.require_node_identity is True and s.rotate_certificates is False
    defaults = load_settings(BASE)
    assert defaults.require_node_identity is False and defaults.rotate_certificates is True
