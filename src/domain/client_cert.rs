//! Client certificates registered to an organization: with mutual TLS, a connection
//! presenting one authenticates as that organization, with the registration's scopes.
//!
//! A registration matches a certificate by its SHA-256 fingerprint (one exact
//! certificate) or by its subject's common name (any certificate the configured client
//! CA issues with that name, so renewals need no new registration).

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::{OrgRef, Scopes, text};
use crate::domain::error::FieldViolation;

/// Longest subject common name accepted (RFC 5280's upper bound is 64; some CAs
/// issue longer ones, so a little room).
const MAX_COMMON_NAME: usize = 200;

/// How a registration recognises a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateMatch {
    /// Lower-case hex SHA-256 of the certificate's DER.
    Fingerprint(String),
    /// The subject's common name, exactly.
    Subject(String),
}

impl CertificateMatch {
    /// `AB:CD:…` (as `openssl x509 -fingerprint -sha256` prints it) or plain hex.
    pub fn fingerprint(raw: &str) -> Result<Self, FieldViolation> {
        let hex: String = raw
            .trim()
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(FieldViolation::new(
                "",
                "must be a SHA-256 fingerprint: 64 hex digits, optionally separated by colons",
            ));
        }
        Ok(Self::Fingerprint(hex))
    }

    /// A common name: one line of 1 to 200 characters, trimmed.
    pub fn subject(raw: &str) -> Result<Self, FieldViolation> {
        let name = text::line(raw, MAX_COMMON_NAME)?;
        if name.is_empty() {
            return Err(FieldViolation::required(""));
        }
        Ok(Self::Subject(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub id: String,
    pub organization: OrgRef,
    pub matches: CertificateMatch,
    pub display_name: String,
    pub scopes: Scopes,
    pub create_time: Timestamp,
    pub revoke_time: Option<Timestamp>,
}

/// What authentication needs of a presented certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    pub fingerprint: String,
    pub common_name: Option<String>,
}

impl PresentedCertificate {
    pub fn of(der: &[u8]) -> Self {
        Self {
            fingerprint: fingerprint(der),
            common_name: common_name(der),
        }
    }
}

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` at the start of a v3 TBSCertificate.
const VERSION_TAG: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The first common name of the certificate's subject, if it has one in a string type.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION_TAG {
        rest = after;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut names, _) = element(rest)? else {
        return None;
    };
    while !names.is_empty() {
        let (SET, mut attributes, next) = element(names)? else {
            return None;
        };
        names = next;
        while !attributes.is_empty() {
            let (SEQUENCE, attribute, next) = element(attributes)? else {
                return None;
            };
            attributes = next;
            let (OID, oid, value) = element(attribute)? else {
                return None;
            };
            if oid == COMMON_NAME_OID {
                let (_, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let colons = "AB:".repeat(31) + "AB";
        assert_eq!(
            CertificateMatch::fingerprint(&colons).unwrap(),
            CertificateMatch::Fingerprint("ab".repeat(32))
        );
        assert!(CertificateMatch::fingerprint("abc").is_err());
        assert!(CertificateMatch::fingerprint(&"zz".repeat(32)).is_err());
        assert!(CertificateMatch::subject("  ").is_err());
        assert_eq!(
            CertificateMatch::subject("a\nb").unwrap_err().reason(),
            "INVALID_TEXT"
        );
        assert_eq!(
            CertificateMatch::subject("a\u{202E}b")
                .unwrap_err()
                .reason(),
            "INVALID_TEXT"
        );
        assert_eq!(
            CertificateMatch::subject(" erp.acme.example ").unwrap(),
            CertificateMatch::Subject("erp.acme.example".into())
        );
    }

    #[test]
    fn der_lengths_are_read_in_every_form_and_malformed_ones_refused() {
        let ab = &b"ab"[..];
        assert_eq!(
            element(&[0x04, 0x02, b'a', b'b', 0xff]),
            Some((0x04, ab, &[0xff][..]))
        );
        // Long form, with one to four length bytes.
        assert_eq!(
            element(&[0x04, 0x81, 0x02, b'a', b'b']),
            Some((0x04, ab, &[][..]))
        );
        let four = [0x04, 0x84, 0, 0, 0, 2, b'a', b'b'];
        assert_eq!(element(&four).map(|(_, content, _)| content), Some(ab));
        let indefinite = [&[0x04, 0x80][..], &[0; 128]].concat();
        for bad in [
            // The indefinite length of BER is not DER.
            &indefinite[..],
            // More than four length bytes.
            &[0x04, 0x85, 0, 0, 0, 0, 2, b'a', b'b'][..],
            // Length bytes or content cut short.
            &[0x04, 0x82, 0x00][..],
            &[0x04, 0x03, b'a', b'b'][..],
            &[0x04][..],
        ] {
            assert_eq!(element(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn the_common_name_is_read_from_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["erp.acme.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme GmbH");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "erp.acme.example");
        let cert = params.self_signed(&key).unwrap();
        let presented = PresentedCertificate::of(cert.der());
        assert_eq!(presented.common_name.as_deref(), Some("erp.acme.example"));
        assert_eq!(presented.fingerprint, fingerprint(cert.der()));
        assert_eq!(presented.fingerprint.len(), 64);

        let without = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        let mut without = without;
        without.distinguished_name = rcgen::DistinguishedName::new();
        let cert = without.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"\x30\x03garbage"), None);
        assert_eq!(common_name(b""), None);
    }
}
