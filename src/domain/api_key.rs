//! API keys: who a caller is and what it may do.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::OrgRef;

/// Every secret starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "lsk_";
/// Secret bytes per key: 256 bits, so no one can guess or brute-force one.
const SECRET_BYTES: usize = 32;
/// Characters of the secret shown in listings to tell keys apart.
const VISIBLE_PREFIX_CHARS: usize = KEY_PREFIX.len() + 6;

/// What a key allows. Each scope includes the ones before it: `Admin` can do what
/// `Write` can, which can do what `Read` can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Self; 3] = [Self::Read, Self::Write, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw))
    }
}

/// A non-empty set of scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Sorts and de-duplicates; `None` if empty.
    pub fn new(mut scopes: Vec<Scope>) -> Option<Self> {
        scopes.sort();
        scopes.dedup();
        (!scopes.is_empty()).then_some(Self(scopes))
    }

    pub fn allows(&self, needed: Scope) -> bool {
        self.0.iter().any(|&held| held >= needed)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// Comma-separated, as stored.
    pub fn to_csv(&self) -> String {
        self.0
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn from_csv(csv: &str) -> Option<Self> {
        Self::new(
            csv.split(',')
                .map(Scope::parse)
                .collect::<Option<Vec<_>>>()?,
        )
    }
}

/// A key's secret as handed to its holder once. Never stored; only its hash is.
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts what `generate` produces; anything else cannot be a key.
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix(KEY_PREFIX)?;
        let well_formed = URL_SAFE_NO_PAD
            .decode(body)
            .is_ok_and(|b| b.len() == SECRET_BYTES);
        well_formed.then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn visible_prefix(&self) -> String {
        self.0[..VISIBLE_PREFIX_CHARS].to_owned()
    }

    /// SHA-256 of the secret. A fast hash is right here: the secret has 256 bits of
    /// entropy, so there is nothing for a slow password hash to protect, and every RPC
    /// can afford to compute it (well under a microsecond).
    pub fn hash(&self) -> KeyHash {
        KeyHash(format!("{:x}", Sha256::digest(self.0.as_bytes())))
    }
}

impl std::fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeySecret(***)")
    }
}

/// Hex SHA-256 of a secret: what the database holds and looks keys up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyHash(pub String);

/// Who a key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The hub's operator: manages organizations.
    Operator,
    Organization(OrgRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub principal: Principal,
    pub display_name: String,
    pub scopes: Scopes,
    pub prefix: String,
    pub create_time: Timestamp,
    pub expire_time: Option<Timestamp>,
    pub revoke_time: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_hash_stably() {
        let secret = ApiKeySecret::generate();
        assert!(secret.expose().starts_with("lsk_"));
        let again = ApiKeySecret::parse(secret.expose()).unwrap();
        assert_eq!(secret.hash(), again.hash());
        assert_ne!(secret.hash(), ApiKeySecret::generate().hash());
        assert!(format!("{secret:?}").contains("***"));
    }

    #[test]
    fn malformed_secrets_are_not_keys() {
        assert!(ApiKeySecret::parse("lsk_short").is_none());
        assert!(ApiKeySecret::parse("nope").is_none());
        let other = format!("xyz_{}", &ApiKeySecret::generate().expose()[4..]);
        assert!(ApiKeySecret::parse(&other).is_none());
    }

    #[test]
    fn higher_scopes_include_lower_ones() {
        let admin = Scopes::new(vec![Scope::Admin]).unwrap();
        assert!(admin.allows(Scope::Read) && admin.allows(Scope::Write));
        let read = Scopes::from_csv("read").unwrap();
        assert!(!read.allows(Scope::Write));
        assert!(Scopes::new(vec![]).is_none());
        assert_eq!(
            Scopes::new(vec![Scope::Write, Scope::Read, Scope::Write])
                .unwrap()
                .to_csv(),
            "read,write"
        );
    }

    #[test]
    fn stored_scopes_read_back_sorted_and_unknown_ones_are_refused() {
        // The store keeps scopes as CSV; what it reads back is what was granted.
        let scopes = Scopes::from_csv("admin,READ").unwrap();
        assert_eq!(
            scopes.iter().collect::<Vec<_>>(),
            [Scope::Read, Scope::Admin]
        );
        assert_eq!(scopes.to_csv(), "read,admin");
        assert_eq!(Scopes::from_csv("read,owner"), None);
        assert_eq!(Scopes::from_csv(""), None);
    }

    #[test]
    fn listings_show_only_the_prefix_and_six_characters_of_a_secret() {
        let secret = ApiKeySecret::generate();
        let shown = secret.visible_prefix();
        assert_eq!(shown.len(), KEY_PREFIX.len() + 6);
        assert!(secret.expose().starts_with(&shown), "{shown}");
    }
}
