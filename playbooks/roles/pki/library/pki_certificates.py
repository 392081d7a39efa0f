#!/usr/bin/python
"""Ansible module: the fleet CA and many certificates signed by it, checked and made in one call on the controller."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pki_certificates
short_description: The fleet CA and the certificates it signs, each checked and made only when needed
description:
  - Runs on the controller (the pki role delegates it to localhost, once per play). Makes the CA's key and
    self-signed certificate when make_ca is set and they are not there; a CA that is there is never replaced.
  - For each certificate asked for, keeps the key and certificate that are there when the key loads, the
    certificate holds that key, was signed by the CA, names the asked common name, subject alternative names
    and extended key usages, and is valid for more than renew_days; otherwise makes what is missing or wrong
    (a new key only when the key is missing or unreadable) and signs a new certificate valid for cert_days.
  - One call for every host of a play, instead of three modules per host run one after another on the
    controller (README, "Converge speed").
  - Keys are written 0600, certificates 0644, each through a temporary file renamed into place. In check mode
    nothing is written and changed says what would be made.
options:
  ca_cert:
    type: path
    required: true
    description: The CA certificate.
  ca_key:
    type: path
    required: true
    description: The CA's private key (unencrypted PEM).
  make_ca:
    type: bool
    default: false
    description: Make the CA (a P-384 key and a self-signed certificate) when ca_cert or ca_key is missing.
  ca_common_name:
    type: str
    default: ""
    description: The CA's common name, when make_ca makes it.
  ca_days:
    type: int
    default: 3650
    description: The validity of a CA certificate made here, in days.
  cert_days:
    type: int
    default: 825
    description: The validity of a certificate signed here, in days.
  renew_days:
    type: int
    default: 30
    description: A certificate valid for this many days or fewer is signed again (same key).
  hosts:
    type: dict
    default: {}
    description:
      - Host certificates, inventory name to its subject alternative names; each is a certificate as in
        certificates with key and cert C(<hosts_dir>/<name>.key) and C(.crt), the name as common name, and
        serverAuth and clientAuth as extended key usages.
  hosts_dir:
    type: path
    default: ""
    description: Where the keys and certificates of hosts go; needed with hosts.
  certificates:
    type: list
    elements: dict
    default: []
    description:
      - The certificates, each a dict of key (path), cert (path), common_name, subject_alt_name (a list of
        C(DNS:name) and C(IP:address)) and extended_key_usage (a list of serverAuth, clientAuth). A new key is a
        P-256 key.
"""

EXAMPLES = r"""
- name: Make the fleet CA and this play's host certificates on the controller
  pki_certificates:
    ca_cert: /srv/fleet/pki/ca.crt
    ca_key: /srv/fleet/pki/ca.key
    make_ca: true
    ca_common_name: dbfleet prod CA
    hosts_dir: /srv/fleet/pki/hosts
    hosts:
      pg-1: [DNS:pg-1, DNS:localhost, IP:127.0.0.1, IP:10.0.1.11]
      pg-2: [DNS:pg-2, DNS:localhost, IP:127.0.0.1, IP:10.0.1.12]
    certificates:
      - key: /srv/fleet/pki/operator.key
        cert: /srv/fleet/pki/operator.crt
        common_name: dbfleet operator
        subject_alt_name: [DNS:localhost, IP:127.0.0.1]
        extended_key_usage: [serverAuth]
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
made:
  description: Each file made (or, in check mode, that would be made), with why.
  returned: always
  type: dict
  sample: {"/srv/fleet/pki/hosts/pg-1.crt": "its names differ from the ones asked for"}
"""

EKU_OIDS = {"serverAuth": "1.3.6.1.5.5.7.3.1", "clientAuth": "1.3.6.1.5.5.7.3.2"}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_key(path: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def _load_cert(path: str) -> Any:
    from cryptography import x509

    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def _not_after(cert: Any) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.UTC)


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _signed_by(cert: Any, ca_cert: Any) -> bool:
    """Whether `cert` names the CA as issuer and its signature checks out with the CA's public key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if cert.issuer != ca_cert.subject:
        return False
    check = getattr(cert, "verify_directly_issued_by", None)
    try:
        if check is not None:
            check(ca_cert)
            return True
        public = ca_cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
        else:
            public.verify(cert.signature, cert.tbs_certificate_bytes)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _general_names(names: list[str]) -> list[Any]:
    from cryptography import x509

    out: list[Any] = []
    for name in names:
        kind, _, value = name.partition(":")
        if kind == "DNS" and value:
            out.append(x509.DNSName(value))
        elif kind == "IP" and value:
            out.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise ValueError(f"subject_alt_name {name!r} is neither DNS:<name> nor IP:<address>")
    return out


def _names_of(cert: Any) -> set[str]:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({f"DNS:{n}" for n in sans.get_values_for_type(x509.DNSName)}
            | {f"IP:{a}" for a in sans.get_values_for_type(x509.IPAddress)})


def _usages_of(cert: Any) -> set[str]:
    from cryptography import x509

    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return set()
    return {u.dotted_string for u in usages}


def _common_name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    found = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else ""


def why_remake(asked: dict[str, Any], key: Any, cert: Any, ca_cert: Any, renew_days: int) -> str:
    """'' when `cert` (holding `key`, signed by `ca_cert`) is what `asked` says; else why it is not."""
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        return "it does not hold the key"
    if not _signed_by(cert, ca_cert):
        return "the CA did not sign it"
    if _common_name(cert) != asked["common_name"]:
        return "its common name differs"
    wanted = {f"IP:{ipaddress.ip_address(n[3:])}" if n.startswith("IP:") else n for n in asked["subject_alt_name"]}
    if _names_of(cert) != wanted:
        return "its names differ from the ones asked for"
    if _usages_of(cert) != {EKU_OIDS[u] for u in asked["extended_key_usage"]}:
        return "its key usages differ"
    if _not_after(cert) - _now() <= datetime.timedelta(days=renew_days):
        return f"it expires within {renew_days} days"
    return ""


def _write(path: str, data: bytes, mode: int) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pki-")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))


def _hash_for(key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    return hashes.SHA256() if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) else None


def make_ca(common_name: str, days: int, key: Any = None) -> tuple[Any, Any]:
    """A self-signed CA certificate for `key` (a new P-384 key when None), and the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = key if key is not None else ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _hash_for(key)))
    return key, cert


def sign(asked: dict[str, Any], key: Any, ca_key: Any, ca_cert: Any, days: int) -> Any:
    """A certificate for `key` as `asked` says, signed by the CA."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    now = _now()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, asked["common_name"])]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName(_general_names(asked["subject_alt_name"])), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    if asked["extended_key_usage"]:
        usages = [ObjectIdentifier(EKU_OIDS[u]) for u in asked["extended_key_usage"]]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def converge(params: dict[str, Any], check: bool) -> dict[str, str]:
    """Make what is missing or wrong (nothing written when `check`); each file made, with why."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    made: dict[str, str] = {}
    ca_cert_path, ca_key_path = params["ca_cert"], params["ca_key"]
    if params["make_ca"] and not (os.path.exists(ca_cert_path) and os.path.exists(ca_key_path)):
        if not params["ca_common_name"]:
            raise ValueError("make_ca needs ca_common_name")
        kept = _load_key(ca_key_path) if os.path.exists(ca_key_path) else None
        ca_key, ca_cert = make_ca(params["ca_common_name"], params["ca_days"], kept)
        made[ca_cert_path] = "there was no CA certificate"
        if kept is None:
            made[ca_key_path] = "there was no CA key"
            if not check:
                _write(ca_key_path, _key_pem(ca_key), 0o600)
        if not check:
            _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        ca_key, ca_cert = _load_key(ca_key_path), _load_cert(ca_cert_path)
    if params["hosts"] and not params["hosts_dir"]:
        raise ValueError("hosts needs hosts_dir")
    wanted = [{"key": os.path.join(params["hosts_dir"], f"{name}.key"),
               "cert": os.path.join(params["hosts_dir"], f"{name}.crt"), "common_name": name,
               "subject_alt_name": list(sans), "extended_key_usage": ["serverAuth", "clientAuth"]}
              for name, sans in sorted(params["hosts"].items())]
    for asked in [*params["certificates"], *wanted]:
        for field in ("key", "cert", "common_name", "subject_alt_name"):
            if not asked.get(field):
                raise ValueError(f"a certificate needs {field}: {asked!r}")
        asked.setdefault("extended_key_usage", [])
        unknown = set(asked["extended_key_usage"]) - set(EKU_OIDS)
        if unknown:
            raise ValueError(f"extended_key_usage {sorted(unknown)} is not one of {sorted(EKU_OIDS)}")
        _general_names(asked["subject_alt_name"])  # refuse a malformed name before writing anything
        try:
            key = _load_key(asked["key"])
        except (OSError, ValueError, TypeError):
            key = None
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            made[asked["key"]] = "there was no readable key"
            if not check:
                _write(asked["key"], _key_pem(key), 0o600)
        try:
            why = why_remake(asked, key, _load_cert(asked["cert"]), ca_cert, params["renew_days"])
        except (OSError, ValueError):
            why = "there was no readable certificate"
        if why:
            made[asked["cert"]] = why
            if not check:
                cert = sign(asked, key, ca_key, ca_cert, params["cert_days"])
                _write(asked["cert"], cert.public_bytes(serialization.Encoding.PEM), 0o644)
        for path, mode in ((asked["key"], 0o600), (asked["cert"], 0o644)):
            if os.path.exists(path) and os.stat(path).st_mode & 0o7777 != mode:
                made.setdefault(path, f"its mode was not {mode:04o}")
                if not check:
                    os.chmod(path, mode)
    return made


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "ca_cert": {"type": "path", "required": True},
            "ca_key": {"type": "path", "required": True},
            "make_ca": {"type": "bool", "default": False},
            "ca_common_name": {"type": "str", "default": ""},
            "ca_days": {"type": "int", "default": 3650},
            "cert_days": {"type": "int", "default": 825},
            "renew_days": {"type": "int", "default": 30},
            "hosts": {"type": "dict", "default": {}},
            "hosts_dir": {"type": "path", "default": ""},
            "certificates": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        made = converge(dict(module.params), module.check_mode)
    except ImportError as exc:
        module.fail_json(msg=f"the controller's Python lacks the cryptography package: {exc}")
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(made), made=made)


if __name__ == "__main__":
    main()
