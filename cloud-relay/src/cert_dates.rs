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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate from openssl valid for `days` from now, as DER.
    fn certificate(dir: &std::path::Path, days: &str) -> Vec<u8> {
        let (key, der) = (
            dir.join(format!("{days}.key")),
            dir.join(format!("{days}.der")),
        );
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-subj",
                "/CN=dates",
                "-days",
                days,
                "-outform",
                "DER",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&der)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        std::fs::read(der).expect("der")
    }

    /// Dates before 2050 are UTCTime, later ones GeneralizedTime (RFC 5280 §4.1.2.5): both
    /// read as openssl wrote them.
    #[test]
    fn both_time_forms_are_read() {
        let dir = std::env::temp_dir().join(format!("postern-cert-dates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let day = Duration::from_secs(24 * 3600);
        for days in [1u64, 20_000] {
            let v = Validity::of(&certificate(&dir, &days.to_string())).expect("dates");
            // After the certificate is made: its start is that second, and a `now` taken
            // before it in the second before would find it not valid yet.
            let now = SystemTime::now();
            let from = now.duration_since(v.not_before).unwrap_or_default();
            assert!(from < day, "{days}: not_before {}", shown(v.not_before));
            let to = v.not_after.duration_since(now).expect("ends later");
            let want = day * u32::try_from(days).expect("days");
            assert!(
                to > want - day && to < want + day,
                "{days}: not_after {}",
                shown(v.not_after)
            );
            assert_eq!(v.lapsed_at(now), None);
            assert_eq!(v.ends_soon(now), days == 1);
        }
        assert_eq!(Validity::of(b"\x30\x03\x02\x01\x01"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
