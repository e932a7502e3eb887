"""Release with provenance: every released image carries a signed C2PA manifest and IPTC XMP
saying it was made by a trained model (EU AI Act Art. 50(2): machine-readable marking).

The manifest names the model, the variant and its licence, the job and the hash of the audit
event that approved it; the XMP repeats the digital source type and names the model for tools
that read XMP only (exiftool, photo libraries). The XMP is written before signing, so the
manifest's hash covers it too. Nothing here falls back to an unsigned image: any problem with
the key, the certificates or the signing raises `SigningError`.

The embedded default key is issued by a local CA made on first use (`init_signing`); C2PA
readers report it as untrusted (`signingCredential.untrusted`) until its CA is on their trust
list. Production points the settings at a key and chain from a CA readers trust.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import c2pa
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import AuditEvent
from core.settings import Settings
from generation.variants import VARIANTS
from pipeline.errors import SigningError, SigningKeyExistsError
from pipeline.models import APPROVED, Job

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# Our own assertion: what the audit log knows about the release, for whoever checks it.
RELEASE_ASSERTION = "com.clearance.release"
PNG = "image/png"
JPEG = "image/jpeg"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_KEYWORD = b"XML:com.adobe.xmp"


# --- what a manifest says ------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseFacts:
    """What the manifest and the XMP of one released image state."""

    job_id: str
    image_id: str
    image_index: int
    generated_sha256: str
    model: str
    variant: str
    variant_title: str
    licence_id: str
    licence_name: str
    commercial_use: bool
    approval_event_seq: int
    approval_event_hash: str

    @property
    def credit(self) -> str:
        return f"Generated with {self.variant_title} ({self.model}), cleared by Clearance"

    @property
    def usage_terms(self) -> str:
        return f"Made with {self.variant_title} under the {self.licence_name} ({self.licence_id})"


def approval_event(*, session: Session, job_id: str) -> AuditEvent:
    """The latest audit event that moved the job to `approved`: the route stage's automatic
    approval or a reviewer's decision."""
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.subject == f"job:{job_id}", AuditEvent.type == "job.state_changed")
        .order_by(AuditEvent.seq.desc())
    )
    for event in events:
        if json.loads(event.payload).get("to") == APPROVED:
            return event
    raise SigningError(f"job {job_id!r} has no audit event approving it; nothing is released")


def release_facts(*, session: Session, job: Job) -> list[ReleaseFacts]:
    """The facts for each image of an approved job, read in the caller's transaction."""
    variant = VARIANTS[job.variant]
    approval = approval_event(session=session, job_id=job.id)
    return [
        ReleaseFacts(
            job_id=job.id,
            image_id=image.id,
            image_index=image.index,
            generated_sha256=image.blob_sha256,
            model=job.model or variant.hub_repo,
            variant=variant.name,
            variant_title=variant.title,
            licence_id=variant.licence_id,
            licence_name=variant.licence_name,
            commercial_use=variant.commercial_use,
            approval_event_seq=approval.seq,
            approval_event_hash=approval.hash,
        )
        for image in job.images
    ]


def _clearance_version() -> str:
    try:
        return metadata.version("clearance")
    except metadata.PackageNotFoundError:
        return "unknown"


def manifest(facts: ReleaseFacts) -> dict[str, Any]:
    """The C2PA manifest definition (c2pa-rs JSON form) for one image."""
    release = {
        "job_id": facts.job_id,
        "image_id": facts.image_id,
        "image_index": facts.image_index,
        "generated_sha256": facts.generated_sha256,
        "model": facts.model,
        "variant": facts.variant,
        "licence": {
            "id": facts.licence_id,
            "name": facts.licence_name,
            "commercial_use": facts.commercial_use,
        },
        "approval": {
            "audit_event_seq": facts.approval_event_seq,
            "audit_event_hash": facts.approval_event_hash,
        },
    }
    return {
        "claim_generator_info": [{"name": "Clearance", "version": _clearance_version()}],
        "title": f"{facts.job_id}-{facts.image_index}",
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": {"name": facts.variant_title},
                            "description": facts.credit,
                            "parameters": {
                                "com.clearance.model": facts.model,
                                "com.clearance.job_id": facts.job_id,
                            },
                        }
                    ]
                },
            },
            {"label": RELEASE_ASSERTION, "data": release},
        ],
    }


def xmp(facts: ReleaseFacts) -> str:
    """IPTC Photo Metadata as XMP: digital source type, AI system, credit, licence terms."""

    def alt(text: str) -> str:
        return f'<rdf:Alt><rdf:li xml:lang="x-default">{escape(text)}</rdf:li></rdf:Alt>'

    description = (
        f"AI-generated image (job {facts.job_id}, image {facts.image_index}), "
        f"made with {facts.variant_title}"
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/">'
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        f"<Iptc4xmpExt:AISystemUsed>{escape(facts.variant_title)}</Iptc4xmpExt:AISystemUsed>"
        f"<photoshop:Credit>{escape(facts.credit)}</photoshop:Credit>"
        f"<xmp:CreatorTool>{escape(facts.model)}</xmp:CreatorTool>"
        f"<dc:description>{alt(description)}</dc:description>"
        f"<xmpRights:UsageTerms>{alt(facts.usage_terms)}</xmpRights:UsageTerms>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    )


# --- adding XMP ----------------------------------------------------------------------------


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) of each chunk of a PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        raise SigningError("the image to release is not a PNG")
    position = len(_PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        end = position + 12 + length
        yield data[position + 4 : position + 8], data[position:end]
        position = end


def png_with_xmp(png: bytes, packet: str) -> bytes:
    """The PNG with `packet` as its only XMP (an iTXt chunk after IHDR); the pixel data keeps
    its exact bytes, so the signed image decodes to the generated one."""
    body = _XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + packet.encode("utf-8")
    chunk = (
        struct.pack(">I", len(body))
        + b"iTXt"
        + body
        + struct.pack(">I", zlib.crc32(b"iTXt" + body) & 0xFFFFFFFF)
    )
    out = [_PNG_SIGNATURE]
    for kind, whole in _png_chunks(png):
        if kind == b"iTXt" and whole[8:].startswith(_XMP_KEYWORD + b"\x00"):
            continue
        out.append(whole)
        if kind == b"IHDR":
            out.append(chunk)
    return b"".join(out)


def jpeg_with_xmp(png: bytes, packet: str, quality: int) -> bytes:
    image = Image.open(io.BytesIO(png))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, xmp=packet.encode("utf-8"))
    return buffer.getvalue()


# --- keys and certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    key_pem: bytes
    chain_pem: bytes
    algorithm: c2pa.C2paSigningAlg
    # sha256 of the signing certificate (DER), recorded in the audit log with each release.
    fingerprint: str
    subject: str


def _algorithm(key: object) -> c2pa.C2paSigningAlg:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {
            "secp256r1": c2pa.C2paSigningAlg.ES256,
            "secp384r1": c2pa.C2paSigningAlg.ES384,
            "secp521r1": c2pa.C2paSigningAlg.ES512,
        }
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    raise SigningError(
        f"the signing key is a {type(key).__name__}; C2PA signs with EC P-256, P-384 or "
        "P-521, Ed25519 or RSA (PSS) keys"
    )


def load_credentials(settings: Settings) -> Credentials:
    """The signing key and certificate chain from settings. The embedded default (no paths
    configured) is created on first use; configured files are never created."""
    key_path, chain_path = settings.signing_key_path, settings.certificate_chain_path
    default = (
        settings.provenance.signing_key is None and settings.provenance.certificate_chain is None
    )
    if default and not key_path.exists() and not chain_path.exists():
        with _creation_lock(key_path.parent):
            if not key_path.exists() and not chain_path.exists():
                init_signing(settings)
    try:
        key_pem, chain_pem = key_path.read_bytes(), chain_path.read_bytes()
    except OSError as e:
        raise SigningError(
            f"cannot read the signing key or certificate chain ({e}); set "
            "CLEARANCE_PROVENANCE__SIGNING_KEY and CLEARANCE_PROVENANCE__CERTIFICATE_CHAIN, or "
            "run `clearance keys init-signing`"
        ) from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningError(f"the signing key {key_path} is not a readable PEM key: {e}") from e
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise SigningError(
            f"the certificate chain {chain_path} is not readable PEM certificates: {e}"
        ) from e
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise SigningError(
            f"the first certificate of {chain_path} is not for the key in {key_path}"
        )
    return Credentials(
        key_pem=key_pem,
        chain_pem=chain_pem,
        algorithm=_algorithm(key),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        subject=leaf.subject.rfc4514_string(),
    )


@contextlib.contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """Serialise creating the default key across worker processes on this machine."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / ".lock").open("a")
    except OSError as e:
        raise SigningError(f"cannot create the default signing key in {folder}: {e}") from e
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class InitializedSigning:
    key: Path
    chain: Path
    ca: Path
    fingerprint: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clearance"),
        ]
    )


def _key_usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not sign,
        crl_sign=not sign,
        encipher_only=False,
        decipher_only=False,
    )


def init_signing(settings: Settings, *, force: bool = False) -> InitializedSigning:
    """A local CA and a P-256 signing certificate it issues (what C2PA asks of a signer:
    digitalSignature key usage, the emailProtection extended key usage, not a CA, issued by
    another certificate). Writes the key (0600), the chain (signing certificate, then CA) and
    the CA certificate alone, for readers' trust lists. The CA's key is not kept."""
    key_path, chain_path = settings.signing_key_path, settings.certificate_chain_path
    ca_path = chain_path.with_name("local-ca.pem")
    existing = [p for p in (key_path, chain_path) if p.exists()]
    if existing and not force:
        raise SigningKeyExistsError(
            f"{', '.join(map(str, existing))} exist(s); pass --force to replace the signing "
            "key (images signed before stay verifiable with the old chain they embed)",
            field="force",
        )
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Clearance local C2PA CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("Clearance release signer"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        _write(key_path, key_pem, mode=0o600)
        _write(chain_path, leaf.public_bytes(pem) + ca.public_bytes(pem), mode=0o644)
        _write(ca_path, ca.public_bytes(pem), mode=0o644)
    except OSError as e:
        raise SigningError(f"cannot write the signing key and certificates: {e}") from e
    return InitializedSigning(
        key=key_path,
        chain=chain_path,
        ca=ca_path,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write then rename, so a reader never sees half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- signing -------------------------------------------------------------------------------


def sign(
    data: bytes, mime: str, facts: ReleaseFacts, credentials: Credentials, ta_url: str | None
) -> bytes:
    """`data` with the manifest for `facts` embedded and signed."""
    try:
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(
                credentials.algorithm, credentials.chain_pem, credentials.key_pem, ta_url
            )
        )
        with signer, c2pa.Builder(manifest(facts)) as builder:
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
            return out.getvalue()
    except c2pa.C2paError as e:
        raise SigningError(f"C2PA signing failed: {e}") from e


@dataclass(frozen=True)
class SignedImage:
    png: bytes
    jpeg: bytes


def signed_copies(
    png: bytes, facts: ReleaseFacts, credentials: Credentials, settings: Settings
) -> SignedImage:
    """The released PNG and JPEG of one image: XMP added, then each signed on its own (a
    manifest binds the exact bytes of one file)."""
    packet = xmp(facts)
    ta_url = settings.provenance.timestamp_url
    return SignedImage(
        png=sign(png_with_xmp(png, packet), PNG, facts, credentials, ta_url),
        jpeg=sign(
            jpeg_with_xmp(png, packet, settings.provenance.jpeg_quality),
            JPEG,
            facts,
            credentials,
            ta_url,
        ),
    )
