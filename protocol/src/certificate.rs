//! Fields of an X.509 certificate's DER (RFC 5280 §4.1) that both sides read: the
//! certified public key (agent, `x5t` checks) and the validity dates (relay, its TLS).

use der::asn1::AnyRef;
use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};

/// The tbsCertificate fields after the optional `[0]` version, in order.
pub mod tbs {
    pub const SERIAL_NUMBER: usize = 0;
    pub const SIGNATURE: usize = 1;
    pub const ISSUER: usize = 2;
    pub const VALIDITY: usize = 3;
    pub const SUBJECT: usize = 4;
    pub const SUBJECT_PUBLIC_KEY_INFO: usize = 5;
}

/// Field `n` (see [`tbs`]) of a DER certificate's tbsCertificate; `None` when the
/// certificate cannot be read that far.
pub fn tbs_field(cert: &[u8], n: usize) -> Option<AnyRef<'_>> {
    let certificate = AnyRef::from_der(cert).ok()?;
    let tbs = *fields(certificate.value())?.first()?;
    let tbs = fields(tbs.value())?;
    let versioned = tbs.first()?.tag()
        == Tag::ContextSpecific {
            constructed: true,
            number: TagNumber(0),
        };
    tbs.get(n + usize::from(versioned)).copied()
}

/// The DER elements one after another in `content` (a SEQUENCE's value).
pub fn fields(content: &[u8]) -> Option<Vec<AnyRef<'_>>> {
    let mut reader = SliceReader::new(content).ok()?;
    let mut fields = Vec::new();
    while !reader.is_finished() {
        fields.push(AnyRef::decode(&mut reader).ok()?);
    }
    Some(fields)
}
