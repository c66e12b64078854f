//! Webhooks as the Standard Webhooks specification defines them: secrets, signatures,
//! and which destinations a hub may call.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::FieldViolation;

/// Every secret is written `whsec_` + base64 of its bytes.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a secret the hub generates.
const GENERATED_SECRET_BYTES: usize = 32;
/// Accepted secret lengths, as the specification allows.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// How far a receiver accepts a timestamp from its own clock (the reference libraries
/// use five minutes).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// A signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; GENERATED_SECRET_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        Self(bytes)
    }

    /// Reads `whsec_<base64>` (24 to 64 bytes).
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let bad = || {
            FieldViolation::new(
                "",
                "must be whsec_ followed by the base64 of 24 to 64 bytes",
            )
        };
        let encoded = raw.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| bad())?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(bad());
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per active secret.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a received webhook does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the webhook-timestamp header is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} seconds away from now; more than 5 minutes")]
    Stale(i64),
    #[error("no v1 signature in webhook-signature matches the payload")]
    NoMatch,
}

/// Checks a received webhook as a receiver would: the timestamp within tolerance of
/// `now` (unix seconds) and some `v1` signature matching, in constant time.
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::Stale(now - ts));
    }
    let expected = secret.sign(id, ts, body);
    let matches = signatures.split_whitespace().any(|candidate| {
        candidate.len() == expected.len()
            && candidate
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// Whether the hub may send to `ip` when private networks are not allowed: loopback,
/// private, link-local, CGNAT (100.64/10), multicast, broadcast and unspecified
/// addresses are refused, as are their IPv6 counterparts and IPv4-mapped forms.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Why the hub must not call `url` when private networks are not allowed, for a host
/// written as an IP address. (Names are checked when resolved, on every connection.)
pub fn refused_literal_host(url: &reqwest::Url, allow_private: bool) -> Option<String> {
    let ip: IpAddr = url.host_str()?.trim_matches(['[', ']']).parse().ok()?;
    (!allow_private && !is_public(ip))
        .then(|| format!("{ip} is a private or special-purpose address"))
}

/// A webhook destination: `https://` (or `http://` where allowed), with a host, no
/// credentials, at most 2,000 characters.
pub fn parse_url(raw: &str, allow_http: bool) -> Result<reqwest::Url, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::required(""));
    }
    if raw.len() > 2_000 {
        return Err(FieldViolation::new("", "must be at most 2000 characters"));
    }
    let url = reqwest::Url::parse(raw)
        .map_err(|e| FieldViolation::new("", format!("is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(FieldViolation::new(
                "",
                "must use https (the operator has not allowed plain http)",
            ));
        }
        other => {
            return Err(FieldViolation::new(
                "",
                format!("scheme {other:?} is not https"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldViolation::new("", "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldViolation::new(
            "",
            "must not carry credentials; receivers verify the signature instead",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector the Standard Webhooks reference libraries test with.
    #[test]
    fn signs_like_the_reference_libraries() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &format!("v1,bogus {signature}"),
                body,
                1614265330 + 60
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signature,
                b"{}",
                1614265330
            ),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signature,
                body,
                1614265330 + 301
            ),
            Err(VerifyError::Stale(301))
        ));
    }

    /// The `standardwebhooks` crate, an independent implementation, accepts what we sign.
    #[test]
    fn an_independent_verifier_accepts_our_signatures() {
        let secret = WebhookSecret::generate();
        let now = jiff::Timestamp::now().as_second();
        let body = br#"{"type":"customer.updated"}"#;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "webhook-id",
            "0198e1f2-7c3a-7def-8000-000000000001".parse().unwrap(),
        );
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let other = WebhookSecret::generate();
        let header = signature_header(
            &[other, secret.clone()],
            "0198e1f2-7c3a-7def-8000-000000000001",
            now,
            body,
        );
        headers.insert("webhook-signature", header.parse().unwrap());
        let verifier = standardwebhooks::Webhook::new(&secret.expose()).unwrap();
        verifier.verify(body, &headers).expect("verifies");
        assert!(verifier.verify(b"{}", &headers).is_err());
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&s.expose()).unwrap(), s);
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "100.128.0.1", "2606:2800:220:1::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_need_https_a_host_and_no_credentials() {
        assert!(parse_url("https://example.com/hook", false).is_ok());
        assert!(parse_url("http://example.com/hook", false).is_err());
        assert!(parse_url("http://example.com/hook", true).is_ok());
        assert!(parse_url("ftp://example.com", true).is_err());
        assert!(parse_url("https://user:pw@example.com", false).is_err());
        assert!(parse_url("not a url", false).is_err());
        let local = parse_url("https://[::1]:8443/x", false).unwrap();
        assert!(refused_literal_host(&local, false).is_some());
        assert!(refused_literal_host(&local, true).is_none());
        let named = parse_url("https://localhost/x", false).unwrap();
        assert!(
            refused_literal_host(&named, false).is_none(),
            "names are checked on resolution"
        );
    }
}
