"""The bed's certificates and kubeconfigs, made with `cryptography` (no openssl CLI).

One CA signs every serving and client certificate; identities follow what
Kubernetes' bootstrap RBAC expects (system:kube-scheduler, system:node:<name>, ...).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import config

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Identity:
    """A client identity: the CN is the user, each O a group."""

    file: str
    user: str
    groups: tuple[str, ...] = ()


# Client identities the bed's components and tests log in as.
CLIENTS = (
    Identity("admin", "ktbed-admin", ("system:masters",)),
    Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
    Identity("controller-manager", "system:kube-controller-manager"),
    Identity("scheduler", "system:kube-scheduler"),
    Identity("kubelet", f"system:node:{config.NODE_NAME}", ("system:nodes",)),
    Identity("kube-proxy", "system:kube-proxy"),
    # Namespace-scoped developers; their RoleBindings are made per test namespace.
    Identity("dev", "dev", ("ktbed:developers",)),
    Identity("dev-noexec", "dev-noexec", ("ktbed:developers",)),
    Identity("dev-nosecrets", "dev-nosecrets", ("ktbed:developers",)),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class Authority:
    def __init__(self, key: PrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls) -> Authority:
        key = _key()
        name = _name("ktbed-ca")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        subject: x509.Name,
        *,
        server_names: tuple[str, ...] = (),
        client: bool = True,
        server: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[PrivateKey, x509.Certificate]:
        key = _key()
        now = _now()
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    sans.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def kubeconfig(
    user: str,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    server: str,
    namespace: str = "default",
) -> dict[str, object]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ktbed",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [
            {
                "name": f"{user}@ktbed",
                "context": {"cluster": "ktbed", "user": user, "namespace": namespace},
            }
        ],
        "current-context": f"{user}@ktbed",
    }


def write_kubeconfig(path: Path, body: dict[str, object]) -> None:
    _write(path, yaml.safe_dump(body, sort_keys=False).encode(), 0o644)


def create_all(pki: Path = config.PKI_DIR, kubeconfigs: Path = config.KUBECONFIG_DIR) -> None:
    """Make every certificate, key and kubeconfig the bed needs, replacing old ones."""
    ca = Authority.create()
    ca_pem = _pem_cert(ca.cert)
    _write(pki / "ca.crt", ca_pem, 0o644)
    _write(pki / "ca.key", _pem_key(ca.key))

    server_names = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{config.CLUSTER_DOMAIN}",
        "localhost",
        "127.0.0.1",
        config.KUBERNETES_SERVICE_IP,
        config.NODE_IP,
    )
    key, cert = ca.issue(
        _name("kube-apiserver"), server_names=server_names, client=False, server=True
    )
    _write(pki / "apiserver.crt", _pem_cert(cert), 0o644)
    _write(pki / "apiserver.key", _pem_key(key))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki / "sa.key", _pem_key(sa_key))
    _write(
        pki / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )

    for ident in CLIENTS:
        key, cert = ca.issue(_name(ident.user, ident.groups))
        cert_pem, key_pem = _pem_cert(cert), _pem_key(key)
        _write(pki / f"{ident.file}.crt", cert_pem, 0o644)
        _write(pki / f"{ident.file}.key", key_pem)
        write_kubeconfig(
            kubeconfigs / f"{ident.file}.yaml",
            kubeconfig(ident.user, cert_pem, key_pem, ca_pem, config.API_URL),
        )

    # A developer whose certificate ran out yesterday: the API server must refuse it.
    now = _now()
    key, cert = ca.issue(
        _name("dev", ("ktbed:developers",)),
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    write_kubeconfig(
        kubeconfigs / "expired.yaml",
        kubeconfig("dev", _pem_cert(cert), _pem_key(key), ca_pem, config.API_URL),
    )
