//! Match keys: keyed HMACs of normalized contact points, so the hub can tell that two
//! organizations hold the same customer without storing a lookup table that reveals
//! emails or phone numbers to whoever reads the database.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EmailAddress;
use super::customer::PhoneNumber;

/// A secret shorter than this could be brute-forced along with the contact points.
pub const MIN_SECRET_BYTES: usize = 32;

pub struct MatchSecret(Vec<u8>);

impl MatchSecret {
    /// `None` if shorter than [`MIN_SECRET_BYTES`].
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= MIN_SECRET_BYTES).then_some(Self(bytes))
    }

    /// Decodes a configured match secret (base64, at least [`MIN_SECRET_BYTES`] bytes).
    pub fn decode(raw: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD
            .decode(raw.trim())
            .context("must be base64 (standard alphabet, with padding)")?;
        Self::new(bytes)
            .with_context(|| format!("must decode to at least {MIN_SECRET_BYTES} bytes"))
    }

    pub fn email_key(&self, email: &EmailAddress) -> String {
        self.key("email", email.as_str())
    }

    pub fn phone_key(&self, phone: &PhoneNumber) -> String {
        self.key("phone", phone.as_str())
    }

    /// `pair` as made by `Profile::name_postal_pairs`.
    pub fn name_postal_key(&self, pair: &str) -> String {
        self.key("name_postal", pair)
    }

    /// Hex HMAC-SHA256 of `kind:value`: the kind keeps an email and a phone that
    /// happen to share text apart.
    fn key(&self, kind: &str, value: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for MatchSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatchSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::PhoneRegion;

    #[test]
    fn keys_match_normalized_values_and_depend_on_the_secret() {
        let secret = MatchSecret::new(vec![7; 32]).unwrap();
        let a = secret.email_key(&EmailAddress::parse("Jane@Doe.example").unwrap());
        let b = secret.email_key(&EmailAddress::parse(" jane@doe.EXAMPLE").unwrap());
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(!a.contains("jane"));
        let other = MatchSecret::new(vec![8; 32]).unwrap();
        assert_ne!(
            a,
            other.email_key(&EmailAddress::parse("jane@doe.example").unwrap())
        );

        let de = PhoneRegion::parse("DE").unwrap();
        let p1 = secret.phone_key(&PhoneNumber::parse("030 901820", de).unwrap());
        let p2 = secret.phone_key(&PhoneNumber::parse("+49 30 901820", de).unwrap());
        assert_eq!(p1, p2);
        assert!(MatchSecret::new(vec![1; 16]).is_none());
        assert!(format!("{secret:?}").contains("***"));
    }

    #[test]
    fn different_values_and_kinds_give_different_keys() {
        // A key that ignored its value would make every customer a duplicate of all.
        let secret = MatchSecret::new(vec![7; 32]).unwrap();
        let de = PhoneRegion::parse("DE").unwrap();
        let phone = |raw| secret.phone_key(&PhoneNumber::parse(raw, de).unwrap());
        let (berlin, us) = (phone("030 901820"), phone("+16502530000"));
        assert_ne!(berlin, us);
        assert_eq!(berlin.len(), 64);
        let jane = secret.name_postal_key("jane doe|GB|SW1A1AA");
        assert_ne!(jane, secret.name_postal_key("john doe|GB|SW1A1AA"));
        assert_eq!(jane.len(), 64);
        // The same text as another kind of contact point is another key.
        let email = EmailAddress::parse("jane@doe.example").unwrap();
        assert_ne!(
            secret.name_postal_key(email.as_str()),
            secret.email_key(&email)
        );
    }
}
