from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.cluster.pki import make_cluster_pki, node_credentials


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_identity_is_system_node_in_system_nodes(tmp_path):
    client, serving = node_credentials(tmp_path, node_name="mac", node_ip="198.18.0.2")
    cert = _load(client.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:mac"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    sans = _load(serving.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "198.18.0.2" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert oct(client.key.stat().st_mode & 0o777) == "0o600"


def test_cluster_pki_reuses_its_ca(tmp_path):
    first = make_cluster_pki(tmp_path, apiserver_ips=("198.18.0.1",), service_ip="198.19.0.1", metrics_ips=())
    ca_before = first.ca.cert.read_bytes()
    second = make_cluster_pki(tmp_path, apiserver_ips=("198.18.0.1",), service_ip="198.19.0.1", metrics_ips=())
    assert second.ca.cert.read_bytes() == ca_before
    apiserver = _load(second.apiserver.cert)
    assert apiserver.issuer == _load(second.ca.cert).subject
    sans = apiserver.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
