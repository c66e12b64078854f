//! Webhooks as the Standard Webhooks specification defines them: secrets, signatures,
//! and which destinations a hub may call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use ipnet::{Ipv4Net, Ipv6Net};
use sha2::Sha256;

use crate::domain::error::FieldViolation;

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
        let mac = self.mac(id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The HMAC-SHA256 of `{id}.{timestamp}.{body}`, before it is finalized.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
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
    let mac = secret.mac(id, ts, body);
    // The HMAC library's own comparison, in constant time.
    let matches = signatures.split_whitespace().any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|tag| mac.clone().verify_slice(&tag).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// IPv4 ranges the hub never calls unless private networks are allowed: every entry of
/// the IANA IPv4 Special-Purpose Address Registry that is not globally reachable (as of
/// its 2024 revision), all of 192.0.0.0/24, the deprecated 6to4 relay anycast, and
/// multicast (RFC 5771), which the registry leaves to its own.
const REFUSED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private use (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link local (RFC 3927)"),
    ("172.16.0.0/12", "private use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private use (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
];

/// IPv6 ranges refused outright: the entries of the IANA IPv6 Special-Purpose Address
/// Registry that are not globally reachable, the deprecated site-local and
/// IPv4-compatible forms, multicast, and every address outside global unicast
/// (2000::/3). Forms that embed an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4)
/// are judged by that address instead; Teredo (2001::/32) lies in 2001::/23 and is
/// refused whole.
const REFUSED_V6: &[(&str, &str)] = &[
    (
        "::/96",
        "unspecified, loopback and IPv4-compatible (RFC 4291)",
    ),
    (
        "64:ff9b:1::/48",
        "local-use IPv4/IPv6 translation (RFC 8215)",
    ),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    (
        "2001::/23",
        "IETF protocol assignments, Teredo, benchmarking (RFC 2928)",
    ),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing SIDs (RFC 9602)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link local (RFC 4291)"),
    ("fec0::/10", "deprecated site local (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
];

/// Registry entries inside the refused IPv6 ranges that are globally reachable.
const GLOBAL_V6: &[&str] = &[
    "2001:1::1/128",   // Port Control Protocol anycast (RFC 7723)
    "2001:1::2/128",   // TURN anycast (RFC 8155)
    "2001:3::/32",     // AMT (RFC 7450)
    "2001:4:112::/48", // AS112-v6 (RFC 7535)
    "2001:20::/28",    // ORCHIDv2 (RFC 7343)
    "2001:30::/28",    // Drone remote ID (RFC 9374)
];

fn within<N: std::str::FromStr>(
    table: &[(&str, &'static str)],
    contains: impl Fn(&N) -> bool,
) -> Option<&'static str>
where
    N::Err: std::fmt::Debug,
{
    table.iter().find_map(|(net, why)| {
        let net: N = net.parse().expect("the tables hold valid networks");
        contains(&net).then_some(*why)
    })
}

/// Why the hub must not call `ip` when private networks are not allowed, or `None` if
/// it is a globally reachable address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => within::<Ipv4Net>(REFUSED_V4, |n| n.contains(&v4)),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return refusal(IpAddr::V4(v4));
            }
            let global = |net: &&str| {
                net.parse::<Ipv6Net>()
                    .expect("the table holds valid networks")
                    .contains(&v6)
            };
            if GLOBAL_V6.iter().any(global) {
                return None;
            }
            if let Some(why) = within::<Ipv6Net>(REFUSED_V6, |n| n.contains(&v6)) {
                return Some(why);
            }
            let unicast: Ipv6Net = "2000::/3".parse().expect("valid");
            (!unicast.contains(&v6)).then_some("not global unicast (RFC 4291)")
        }
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), the
/// well-known NAT64 prefix (`64:ff9b::a.b.c.d`, RFC 6052) and 6to4 (`2002:AABB:CCDD::`,
/// RFC 3056). (IPv4-compatible `::a.b.c.d` and Teredo are refused whatever they hold.)
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Whether the hub may send to `ip` when private networks are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

/// Why the hub must not call `url` when private networks are not allowed, for a host
/// written as an IP address. (Names are checked when resolved, on every connection.)
pub fn refused_literal_host(url: &url::Url, allow_private: bool) -> Option<String> {
    let ip: IpAddr = url.host_str()?.trim_matches(['[', ']']).parse().ok()?;
    if allow_private {
        return None;
    }
    refusal(ip).map(|why| format!("{ip} is a private or special-purpose address: {why}"))
}

/// A webhook destination: `https://` (or `http://` where allowed), with a host, no
/// credentials, at most 2,000 characters.
pub fn parse_url(raw: &str, allow_http: bool) -> Result<url::Url, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::required(""));
    }
    if raw.len() > 2_000 {
        return Err(FieldViolation::new("", "must be at most 2000 characters"));
    }
    let url =
        url::Url::parse(raw).map_err(|e| FieldViolation::new("", format!("is not a URL: {e}")))?;
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
        // The same tag under another scheme, a truncated tag, or one with two bytes
        // changed (whose differences cancel in an XOR of the bytes) does not match.
        let tag = STANDARD
            .decode(signature.strip_prefix("v1,").unwrap())
            .unwrap();
        let mut flipped = tag.clone();
        flipped[0] ^= 1;
        flipped[1] ^= 1;
        for wrong in [
            format!("v2,{}", STANDARD.encode(&tag)),
            format!("v1,{}", STANDARD.encode(&tag[..31])),
            format!("v1,{}", STANDARD.encode(&flipped)),
            "v1,not base64!".to_owned(),
        ] {
            assert_eq!(
                verify(
                    &secret,
                    "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    "1614265330",
                    &wrong,
                    body,
                    1614265330
                ),
                Err(VerifyError::NoMatch),
                "{wrong}"
            );
        }
        // Five minutes either way is fine; a second more is stale.
        for now in [1614265330 + 300, 1614265330 - 300] {
            let verified = verify(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signature,
                body,
                now,
            );
            assert_eq!(verified, Ok(()), "{now}");
        }
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
    fn urls_are_bounded_and_carry_no_credentials() {
        let at_most = |n: usize| format!("https://hooks.example/{}", "a".repeat(n - 22));
        assert_eq!(at_most(2_000).len(), 2_000);
        assert!(parse_url(&at_most(2_000), false).is_ok());
        assert_eq!(
            parse_url(&at_most(2_001), false).unwrap_err().description,
            "must be at most 2000 characters"
        );
        for with_credentials in [
            "https://user@hooks.example/in",
            "https://:secret@hooks.example/in",
            "https://user:secret@hooks.example/in",
        ] {
            assert!(
                parse_url(with_credentials, false)
                    .unwrap_err()
                    .description
                    .contains("must not carry credentials"),
                "{with_credentials}"
            );
        }
        assert!(parse_url("http://hooks.example/in", false).is_err());
        assert!(parse_url("http://hooks.example/in", true).is_ok());
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
    fn every_refused_range_is_refused_from_end_to_end() {
        // The first and last address of every range, and the neighbours just outside
        // where those are public.
        for (net, _) in REFUSED_V4 {
            let net: Ipv4Net = net.parse().unwrap();
            for ip in [net.network(), net.broadcast()] {
                assert!(!is_public(ip.into()), "{ip} in {net}");
                // The same address in every IPv6 form that embeds it.
                let [a, b, c, d] = ip.octets();
                for form in [
                    format!("::ffff:{ip}"),
                    format!("64:ff9b::{ip}"),
                    format!("2002:{:02x}{:02x}:{:02x}{:02x}::1", a, b, c, d),
                ] {
                    let v6: IpAddr = form.parse().unwrap();
                    assert!(!is_public(v6), "{form} embeds {ip}");
                }
            }
        }
        for (net, _) in REFUSED_V6 {
            let net: Ipv6Net = net.parse().unwrap();
            for ip in [net.network(), net.broadcast()] {
                let inside_global = GLOBAL_V6
                    .iter()
                    .any(|g| g.parse::<Ipv6Net>().unwrap().contains(&ip));
                assert!(inside_global || !is_public(ip.into()), "{ip} in {net}");
            }
        }
        for ip in [
            // Named by the issue that found the gaps.
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.9",
            "240.0.0.1",
            "192.0.2.55",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::ffff:169.254.169.254",
            // And the old ones.
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
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "4000::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "100.128.0.1",
            "100.63.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "223.255.255.255",
            "8.8.8.8",
            "2606:2800:220:1::1",
            "64:ff9b::8.8.8.8",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "2001:4:112::1",
            "2001:200::1",
        ] {
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
