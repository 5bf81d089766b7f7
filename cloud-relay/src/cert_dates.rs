//! The validity dates of the API's certificate (RFC 5280 §4.1.2.5), read so the relay
//! can refuse a lapsed one on reload, warn before it ends, and export its end as a metric.

use std::time::{Duration, SystemTime};

use der::asn1::{AnyRef, GeneralizedTime, UtcTime};
use der::{Tag, Tagged};
use postern_protocol::certificate::{fields, tbs, tbs_field};

/// A warning is logged when the certificate served ends sooner than this.
pub const ENDS_SOON: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Of a DER certificate; `None` when it cannot be read that far (rustls then says why).
    pub fn of(cert: &[u8]) -> Option<Self> {
        let validity = tbs_field(cert, tbs::VALIDITY)?;
        let dates = fields(validity.value())?;
        let [not_before, not_after] = dates.as_slice() else {
            return None;
        };
        Some(Self {
            not_before: time(*not_before)?,
            not_after: time(*not_after)?,
        })
    }

    /// Why the certificate cannot be served at `now`: expired, or not valid yet.
    pub fn lapsed_at(&self, now: SystemTime) -> Option<String> {
        if now > self.not_after {
            Some(format!("it expired at {}", shown(self.not_after)))
        } else if now < self.not_before {
            Some(format!("it is not valid until {}", shown(self.not_before)))
        } else {
            None
        }
    }

    /// Whether it ends within [`ENDS_SOON`] of `now` (and has not ended yet).
    pub fn ends_soon(&self, now: SystemTime) -> bool {
        now <= self.not_after && now + ENDS_SOON > self.not_after
    }
}

pub fn shown(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn time(any: AnyRef<'_>) -> Option<SystemTime> {
    match any.tag() {
        Tag::UtcTime => any.decode_as::<UtcTime>().ok().map(|t| t.to_system_time()),
        Tag::GeneralizedTime => any
            .decode_as::<GeneralizedTime>()
            .ok()
            .map(|t| t.to_system_time()),
        _ => None,
    }
}
