"""FarmCA: the private CA of the farm's Dask cluster and one certificate per member.

Dask authenticates peers by mutual TLS against one CA and never checks host names
(research/dte.md 3.1), so the CA is the farm's alone. Members are the scheduler, each agent and
each orchestrator; each certificate names its member in the subject's CN and its role in the
OU (`scheduler`, `agent`, `orchestrator`), which the farm's servers enforce
(nxfarm/farm/roles.py). Removing a member from the stack destroys its key (rotating the whole
CA is a `secretsGeneration` bump).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from .settings import is_ip

VALIDITY_HOURS = 24 * 825
RENEW_HOURS = 24 * 30  # a `pulumi up` within the last month replaces the certificate
MEMBER_USES = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]


@dataclass(frozen=True)
class MemberTls:
    ca_pem: pulumi.Output[str]
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # secret

    def env(self) -> pulumi.Output[str]:
        """NXFARM_TLS_* lines with the PEMs as `base64:` values (single-line, for dotenv files)."""
        def lines(ca: str, cert: str, key: str) -> str:
            encode = lambda pem: "base64:" + base64.b64encode(pem.encode()).decode()  # noqa: E731
            return f"NXFARM_TLS_CA={encode(ca)}\nNXFARM_TLS_CERT={encode(cert)}\nNXFARM_TLS_KEY={encode(key)}\n"

        return pulumi.Output.secret(pulumi.Output.all(self.ca_pem, self.cert_pem, self.key_pem).apply(
            lambda values: lines(*values)))


ROLES = ("scheduler", "agent", "orchestrator")


@dataclass(frozen=True)
class CaMember:
    role: str              # one of ROLES: the certificate's OU
    addresses: list[str]   # where it is reached (IP SANs; informational for Dask)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"farm CA member role {self.role!r}: must be one of {', '.join(ROLES)}")


@dataclass(frozen=True, kw_only=True)
class FarmCAArgs:
    """+ members: member name -> its role and addresses
    + generation: the stack's secretsGeneration; a new one replaces the CA and every member key
    """

    members: dict[str, CaMember]
    generation: int


def _key(name: str, parent: pulumi.Resource, generation: int) -> tls.PrivateKey:
    # A new generation replaces the key (and so everything signed with or for it).
    return tls.PrivateKey(name, algorithm="ECDSA", ecdsa_curve="P256",
                          opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["private_key_pem"],
                                                      replacement_trigger=str(generation)))


class FarmCA(pulumi.ComponentResource):
    members: dict[str, MemberTls]

    def __init__(self, name: str, args: FarmCAArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:FarmCA", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ca_key = _key(f"{name}-ca-key", self, args.generation)
        subject = tls.SelfSignedCertSubjectArgs(common_name=f"nx-farm cluster CA (generation {args.generation})",
                                                organization="nx-farm")
        self.ca = tls.SelfSignedCert(f"{name}-ca", private_key_pem=pulumi.Output.secret(ca_key.private_key_pem),
                                     subject=subject,
                                     is_ca_certificate=True, validity_period_hours=VALIDITY_HOURS,
                                     early_renewal_hours=RENEW_HOURS, allowed_uses=["cert_signing", "crl_signing"],
                                     opts=child)
        self.members = {}
        for member, spec in sorted(args.members.items()):
            addresses = spec.addresses
            key = _key(f"{name}-{member}-key", self, args.generation)
            subject = tls.CertRequestSubjectArgs(common_name=member, organization="nx-farm",
                                                 organizational_unit=spec.role)
            request = tls.CertRequest(f"{name}-{member}-csr", private_key_pem=pulumi.Output.secret(key.private_key_pem),
                                      subject=subject,
                                      ip_addresses=[a for a in addresses if is_ip(a)],
                                      dns_names=[member, *(a for a in addresses if not is_ip(a))], opts=child)
            cert = tls.LocallySignedCert(f"{name}-{member}-cert", cert_request_pem=request.cert_request_pem,
                                         ca_private_key_pem=pulumi.Output.secret(ca_key.private_key_pem),
                                         ca_cert_pem=self.ca.cert_pem,
                                         validity_period_hours=VALIDITY_HOURS, early_renewal_hours=RENEW_HOURS,
                                         allowed_uses=MEMBER_USES, opts=child)
            self.members[member] = MemberTls(self.ca.cert_pem, cert.cert_pem,
                                             pulumi.Output.secret(key.private_key_pem))
        self.register_outputs({"caCertPem": self.ca.cert_pem})

