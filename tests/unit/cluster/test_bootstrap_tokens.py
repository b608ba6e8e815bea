"""The local cluster's bootstrap token and cluster-info are what `kubeadm init` makes."""

from __future__ import annotations

import datetime as dt

from vnode.cluster import bootstrap_tokens
from vnode.join import discovery


def test_a_new_token_has_kubeadms_form_and_is_random():
    tokens = {str(bootstrap_tokens.new_token()) for _ in range(20)}
    assert len(tokens) == 20 and all(discovery.TOKEN_RE.match(t) for t in tokens)


def test_the_token_secret_is_read_by_the_authenticator_signer_and_cleaner():
    token = discovery.BootstrapToken("abcdef", "0123456789abcdef")
    when = dt.datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
    secret = bootstrap_tokens.token_secret(token, expires=when)
    assert secret["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = secret["stringData"]
    assert (data["token-id"], data["token-secret"]) == ("abcdef", "0123456789abcdef")
    assert data["expiration"] == "2030-01-02T03:04:05Z"
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == "system:bootstrappers:kubeadm:default-node-token"


def test_the_default_expiry_is_a_day_away():
    data = bootstrap_tokens.token_secret(bootstrap_tokens.new_token())["stringData"]
    left = dt.datetime.fromisoformat(data["expiration"].replace("Z", "+00:00")) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23, minutes=59) < left <= dt.timedelta(hours=24)
