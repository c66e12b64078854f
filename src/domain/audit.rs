//! The audit log's hash chain and signed checkpoints: what an entry's hash covers, how
//! a checkpoint is signed, and the check of a run of entries, the same whether the
//! entries come from the database or from an export verified offline.
//!
//! # The chain
//!
//! Each organization's entries are numbered 1, 2, 3, … (`position`). An entry's
//! `content_hash` is SHA-256 of its content (the event as the organization's feed
//! carries it); its `hash` is SHA-256 of a fixed, length-prefixed encoding of the
//! organization id, the position, the feed sequence, the event id, type and resource,
//! the creation time, the content hash and the previous entry's hash (32 zero bytes
//! before the first). Erasing an entry's content keeps its content hash, so the chain
//! still verifies.
//!
//! # Checkpoints
//!
//! Now and then the hub signs an organization's newest entry with Ed25519: the
//! signature covers the organization id, the position, the entry's hash and the time.
//! Anyone can recompute a chain; only the key's holder can sign one, so a checkpoint
//! shows that the chain up to it was not rebuilt after an edit.

use std::collections::{HashMap, VecDeque};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::domain::event::EventType;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The "previous hash" of an organization's first entry.
pub const GENESIS: Hash = [0; 32];

/// Domain separation of entry hashes and checkpoint signatures.
const ENTRY_TAG: &[u8] = b"liaison.audit.entry.v1";
const CHECKPOINT_TAG: &[u8] = b"liaison.audit.checkpoint.v1";

/// Whether events of `event_type` are appended to the audit log: every change to a
/// resource. A logged interaction is not a change (it is itself an immutable record,
/// and the busiest write), so it is left out.
pub fn audited(event_type: EventType) -> bool {
    event_type != EventType::InteractionLogged
}

/// The customer a resource name is about (`customers/{id}` and what hangs off it).
pub fn customer_in(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("customers/")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|id| !id.is_empty())
}

/// What an entry's hash covers besides its content.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub organization_id: &'a str,
    pub position: i64,
    /// The event's sequence in the organization's feed.
    pub sequence: i64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub resource: &'a str,
    /// Microseconds since the Unix epoch.
    pub create_time: i64,
    /// The id of the customer the event is about; empty if none. Only such an entry's
    /// content may be erased, and only once its customer was.
    pub customer: &'a str,
    /// For `customer.erased`: the customers whose entries the erasure emptied (the
    /// erased one and those merged into it), space-separated; empty otherwise.
    pub erases: &'a str,
}

/// Bytes of random salt hashed with each entry's content, so that once the content is
/// erased (with its salt) no one can confirm a guess at it against the hash.
pub const SALT_BYTES: usize = 16;

/// SHA-256 of `salt` and `content`.
pub fn content_hash(salt: &[u8], content: &[u8]) -> Hash {
    let mut h = Sha256::new();
    put(&mut h, salt);
    h.update(content);
    h.finalize().into()
}

/// The hash of the entry `header` with content hash `content`, following `previous`.
pub fn entry_hash(header: &Header<'_>, content: &Hash, previous: &Hash) -> Hash {
    let mut h = Sha256::new();
    put(&mut h, ENTRY_TAG);
    put(&mut h, header.organization_id.as_bytes());
    h.update(header.position.to_be_bytes());
    h.update(header.sequence.to_be_bytes());
    put(&mut h, header.event_id.as_bytes());
    put(&mut h, header.event_type.as_bytes());
    put(&mut h, header.resource.as_bytes());
    h.update(header.create_time.to_be_bytes());
    put(&mut h, header.customer.as_bytes());
    put(&mut h, header.erases.as_bytes());
    h.update(content);
    h.update(previous);
    h.finalize().into()
}

/// A length-prefixed field, so no two different headers encode alike.
fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_message(
    organization_id: &str,
    position: i64,
    hash: &Hash,
    create_time: i64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_TAG.len() + organization_id.len() + 64);
    for part in [CHECKPOINT_TAG, organization_id.as_bytes()] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&position.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&create_time.to_be_bytes());
    m
}

/// The hub's checkpoint signing key: Ed25519, given as base64 of its PKCS#8 document.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Parses base64 (standard alphabet) of a PKCS#8 v1 or v2 Ed25519 key document.
    pub fn parse(encoded: &str) -> Result<Self, String> {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "is not base64".to_owned())?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(Self)
            .map_err(|_| {
                "is not a PKCS#8 Ed25519 key (make one with `liaison audit keygen`)".to_owned()
            })
    }

    /// A new key, as [`SigningKey::parse`] reads it.
    pub fn generate() -> String {
        use base64::Engine;
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("the system's random source works");
        base64::engine::general_purpose::STANDARD.encode(document.as_ref())
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey(public {})",
            public_key_text(&self.public_key())
        )
    }
}

/// A public key as people pass it around: base64 of its 32 bytes.
pub fn public_key_text(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Parses a public key given as [`public_key_text`] writes it.
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(key) if key.len() == 32 => Ok(key),
        _ => Err("is not an Ed25519 public key (base64 of 32 bytes)".to_owned()),
    }
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`.
pub fn signature_valid(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// An entry as it was stored or exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: i64,
    pub sequence: i64,
    pub event_id: String,
    pub event_type: String,
    pub resource: String,
    pub create_time: i64,
    /// The customer the entry is about (an id; empty if none).
    pub customer: String,
    /// For `customer.erased`: the customers whose entries it emptied, space-separated.
    pub erases: String,
    /// `None` once erased, as is the salt.
    pub content: Option<Vec<u8>>,
    pub salt: Option<Vec<u8>>,
    pub content_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Record {
    /// What the entry's hash covers besides its content, for `organization_id`'s log.
    pub fn header<'a>(&'a self, organization_id: &'a str) -> Header<'a> {
        Header {
            organization_id,
            position: self.position,
            sequence: self.sequence,
            event_id: &self.event_id,
            event_type: &self.event_type,
            resource: &self.resource,
            create_time: self.create_time,
            customer: &self.customer,
            erases: &self.erases,
        }
    }
}

/// A signed checkpoint as it was stored or exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub hash: Vec<u8>,
    pub create_time: i64,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Entry `expected` is not there; the next stored is `found` (or none).
    Missing { expected: i64, found: Option<i64> },
    /// The content no longer matches the hash it was stored with.
    Content { position: i64, event_id: String },
    /// The entry's hash does not follow from its fields and the entry before it.
    Hash { position: i64, event_id: String },
    /// The content is gone, but no erasure of the entry's customer is recorded.
    Emptied { position: i64, event_id: String },
    /// An erasure entry names a customer the hub never erased.
    Erasure { position: i64, customer: String },
    /// A checkpoint does not vouch for the chain.
    Checkpoint { position: i64, why: &'static str },
    /// The chain does not end where the organization's head says.
    Head { last: i64, head: i64 },
}

impl Fault {
    /// The position of the first bad entry.
    pub fn position(&self) -> i64 {
        match self {
            Fault::Missing { expected, .. } => *expected,
            Fault::Content { position, .. }
            | Fault::Emptied { position, .. }
            | Fault::Erasure { position, .. }
            | Fault::Hash { position, .. }
            | Fault::Checkpoint { position, .. } => *position,
            Fault::Head { last, head } => (*last).min(*head) + 1,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Missing {
                expected,
                found: Some(found),
            } => write!(
                f,
                "entry {expected} is missing (the next one stored is {found}): deleted or renumbered"
            ),
            Fault::Missing {
                expected,
                found: None,
            } => write!(
                f,
                "entry {expected} is missing (the log ends before it): deleted"
            ),
            Fault::Content { position, event_id } => write!(
                f,
                "entry {position} (event {event_id}): its content does not match its content hash: edited"
            ),
            Fault::Hash { position, event_id } => write!(
                f,
                "entry {position} (event {event_id}): its hash does not follow from its fields and \
                 the entry before it: edited, inserted or moved"
            ),
            Fault::Emptied { position, event_id } => write!(
                f,
                "entry {position} (event {event_id}): its content was removed, but the log \
                 records no erasure of its customer"
            ),
            Fault::Erasure { position, customer } => write!(
                f,
                "entry {position} records the erasure of customers/{customer}, which was not \
                 erased: forged to hide content"
            ),
            Fault::Checkpoint { position, why } => {
                write!(f, "the checkpoint at entry {position}: {why}")
            }
            Fault::Head { last, head } if last < head => write!(
                f,
                "the log ends at entry {last} but {head} were appended: entries after {last} deleted"
            ),
            Fault::Head { last, head } => write!(
                f,
                "the log goes on to entry {last} but only {head} were appended: entries after {head} \
                 inserted, or the head moved back"
            ),
        }
    }
}

/// Checks one organization's entries in position order, one at a time, so a log of
/// any length is checked in constant memory (but for erased entries waiting for the
/// erasure that emptied them).
#[derive(Debug)]
pub struct Chain {
    organization_id: String,
    next: i64,
    previous: Hash,
    /// Checkpoints not yet reached, by position.
    checkpoints: VecDeque<Checkpoint>,
    trusted: Vec<Vec<u8>>,
    /// Customers an erasure entry met so far emptied, and that entry's position.
    erased_customers: HashMap<String, i64>,
    /// Emptied entries whose erasure has not been met yet: customer → first position
    /// and event id.
    waiting: HashMap<String, (i64, String)>,
    summary: Summary,
}

/// What a whole check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub entries: u64,
    /// Entries whose content was erased (their hashes checked all the same).
    pub erased: u64,
    /// Checkpoints whose signature was checked against a trusted key.
    pub checkpoints: u64,
    /// Checkpoints not checked because no trusted key was given.
    pub unchecked_checkpoints: u64,
    /// The last entry a checkpoint vouches for (0: none).
    pub vouched_through: i64,
    /// The time of the first entry after it, if any: how long the log's tail has gone
    /// without a checkpoint.
    pub unvouched_since: Option<i64>,
}

impl Chain {
    /// A check starting at entry `first`, which follows the hash `previous` (ignored
    /// for entry 1, which follows the [`GENESIS`]); `checkpoints` in any order,
    /// `trusted` the public keys checkpoints must be signed with (none: signatures are
    /// not checked, and the summary says how many went unchecked).
    pub fn new(
        organization_id: &str,
        (first, previous): (i64, Hash),
        checkpoints: Vec<Checkpoint>,
        trusted: Vec<Vec<u8>>,
    ) -> Self {
        let mut chain = Self {
            organization_id: organization_id.to_owned(),
            next: first,
            previous: if first == 1 { GENESIS } else { previous },
            checkpoints: VecDeque::new(),
            trusted,
            erased_customers: HashMap::new(),
            waiting: HashMap::new(),
            summary: Summary::default(),
        };
        chain.expect(checkpoints);
        chain
    }

    /// Adds checkpoints to meet on the way (those before the next entry are ignored):
    /// an export's, page by page.
    pub fn expect(&mut self, checkpoints: Vec<Checkpoint>) {
        let mut all: Vec<Checkpoint> = self.checkpoints.drain(..).collect();
        all.extend(checkpoints.into_iter().filter(|c| c.position >= self.next));
        all.sort_by_key(|c| c.position);
        self.checkpoints = all.into();
    }

    /// The position the next entry must have.
    pub fn next_position(&self) -> i64 {
        self.next
    }

    /// Checks the next entry.
    pub fn check(&mut self, r: &Record) -> Result<(), Fault> {
        if r.position != self.next {
            return Err(Fault::Missing {
                expected: self.next,
                found: Some(r.position),
            });
        }
        let stored_content: Option<Hash> = r.content_hash.as_slice().try_into().ok();
        let Some(content) = stored_content else {
            return Err(self.bad_hash(r));
        };
        let edited = || Fault::Content {
            position: r.position,
            event_id: r.event_id.clone(),
        };
        match (&r.content, &r.salt) {
            (Some(bytes), Some(salt)) if content_hash(salt, bytes) == content => {}
            // Only an entry about a customer may be emptied, and only by an erasure of
            // that customer recorded in the log (now or later).
            (None, None) if !r.customer.is_empty() => {
                self.summary.erased += 1;
                if !self.erased_customers.contains_key(&r.customer) {
                    self.waiting
                        .entry(r.customer.clone())
                        .or_insert_with(|| (r.position, r.event_id.clone()));
                }
            }
            _ => return Err(edited()),
        }
        let hash = entry_hash(&r.header(&self.organization_id), &content, &self.previous);
        if r.hash != hash {
            return Err(self.bad_hash(r));
        }
        if r.event_type == EventType::CustomerErased.as_str() {
            // An erasure entry vouches for emptied entries, so it must be whole itself.
            if r.content.is_none() {
                return Err(edited());
            }
            for customer in r.erases.split_whitespace() {
                self.waiting.remove(customer);
                self.erased_customers
                    .entry(customer.to_owned())
                    .or_insert(r.position);
            }
        }
        if self.summary.unvouched_since.is_none() {
            self.summary.unvouched_since = Some(r.create_time);
        }
        while self
            .checkpoints
            .front()
            .is_some_and(|c| c.position == r.position)
        {
            let c = self.checkpoints.pop_front().expect("just seen");
            self.vouch(&c, &hash)?;
            self.summary.vouched_through = r.position;
            self.summary.unvouched_since = None;
        }
        self.previous = hash;
        self.next += 1;
        self.summary.entries += 1;
        Ok(())
    }

    fn bad_hash(&self, r: &Record) -> Fault {
        Fault::Hash {
            position: r.position,
            event_id: r.event_id.clone(),
        }
    }

    fn vouch(&mut self, c: &Checkpoint, hash: &Hash) -> Result<(), Fault> {
        let fault = |why| Fault::Checkpoint {
            position: c.position,
            why,
        };
        if c.hash != hash {
            return Err(fault(
                "the signed hash differs from the chain's (the chain was rebuilt after an edit)",
            ));
        }
        if self.trusted.is_empty() {
            self.summary.unchecked_checkpoints += 1;
            return Ok(());
        }
        if !self.trusted.contains(&c.public_key) {
            return Err(fault("signed by a key that is not trusted"));
        }
        let message = checkpoint_message(&self.organization_id, c.position, hash, c.create_time);
        if !signature_valid(&c.public_key, &message, &c.signature) {
            return Err(fault("the signature is not valid"));
        }
        self.summary.checkpoints += 1;
        Ok(())
    }

    /// Ends the check after the last entry; `head` is how many entries the hub says it
    /// appended (`None` for an export, which need not reach the end).
    pub fn finish(self, head: Option<i64>) -> Result<Summary, Fault> {
        let last = self.next - 1;
        // Checkpoints at or before the last entry were met on the way; one left over
        // signs an entry that is no longer there.
        if !self.checkpoints.is_empty() {
            return Err(Fault::Missing {
                expected: self.next,
                found: None,
            });
        }
        if let Some((position, event_id)) = self.waiting.into_values().min() {
            return Err(Fault::Emptied { position, event_id });
        }
        if let Some(head) = head
            && head != last
        {
            return Err(Fault::Head { last, head });
        }
        Ok(self.summary)
    }

    /// The customers the erasure entries checked so far name, with the first such
    /// entry's position: the hub checks them against its records (an erasure entry
    /// forged to hide content names a customer that was not erased).
    pub fn erased_customers(&self) -> impl Iterator<Item = (&str, i64)> {
        self.erased_customers.iter().map(|(c, p)| (c.as_str(), *p))
    }

    /// The hash of the last entry checked.
    pub fn last_hash(&self) -> Hash {
        self.previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "0198e1f2-7c3a-7def-8000-000000000001";

    /// Recomputes every hash from `previous` on, as anyone with write access could.
    fn seal(records: &mut [Record], mut previous: Hash) {
        for r in records {
            if let (Some(content), Some(salt)) = (&r.content, &r.salt) {
                r.content_hash = content_hash(salt, content).to_vec();
            }
            let content: Hash = r.content_hash.as_slice().try_into().unwrap();
            previous = entry_hash(&r.header(ORG), &content, &previous);
            r.hash = previous.to_vec();
        }
    }

    /// A chain of `n` entries as the hub would store them, about customers c1, c2, …
    fn chain(n: i64) -> Vec<Record> {
        let mut records: Vec<Record> = (1..=n)
            .map(|position| Record {
                position,
                sequence: position * 2,
                event_id: format!("e{position}"),
                event_type: "customer.updated".into(),
                resource: format!("customers/c{position}"),
                create_time: 1_700_000_000_000_000 + position,
                customer: format!("c{position}"),
                erases: String::new(),
                content: Some(format!("event body {position}").into_bytes()),
                salt: Some(vec![position as u8; SALT_BYTES]),
                content_hash: vec![],
                hash: vec![],
            })
            .collect();
        seal(&mut records, GENESIS);
        records
    }

    fn verify(
        records: &[Record],
        checkpoints: Vec<Checkpoint>,
        trusted: Vec<Vec<u8>>,
        head: Option<i64>,
    ) -> Result<Summary, Fault> {
        let mut c = Chain::new(ORG, (1, GENESIS), checkpoints, trusted);
        for r in records {
            c.check(r)?;
        }
        c.finish(head)
    }

    fn signed(key: &SigningKey, r: &Record) -> Checkpoint {
        let hash: Hash = r.hash.as_slice().try_into().unwrap();
        let time = 1_800_000_000_000_000;
        Checkpoint {
            position: r.position,
            hash: r.hash.clone(),
            create_time: time,
            public_key: key.public_key(),
            signature: key.sign(&checkpoint_message(ORG, r.position, &hash, time)),
        }
    }

    #[test]
    fn an_untouched_chain_verifies_and_an_erased_content_keeps_it_valid() {
        let mut records = chain(5);
        assert_eq!(
            verify(&records, vec![], vec![], Some(5)).unwrap().entries,
            5
        );
        // Emptied, and the erasure of its customer recorded later in the log.
        records[2].content = None;
        records[2].salt = None;
        let mut erasure = records[4].clone();
        erasure.position = 6;
        erasure.event_type = "customer.erased".into();
        erasure.resource = "customers/c3".into();
        erasure.customer = "c3".into();
        erasure.erases = "c3 c9".into();
        records.push(erasure);
        let previous: Hash = records[4].hash.as_slice().try_into().unwrap();
        seal(&mut records[5..], previous);
        let summary = verify(&records, vec![], vec![], Some(6)).unwrap();
        assert_eq!((summary.entries, summary.erased), (6, 1));
    }

    #[test]
    fn content_removed_without_an_erasure_or_from_no_customers_entry_is_found() {
        let mut records = chain(5);
        records[1].content = None;
        records[1].salt = None;
        assert_eq!(
            verify(&records, vec![], vec![], Some(5)).unwrap_err(),
            Fault::Emptied {
                position: 2,
                event_id: "e2".into()
            }
        );
        // An erasure of another customer does not cover it.
        let mut erasure = records[4].clone();
        erasure.position = 6;
        erasure.event_type = "customer.erased".into();
        erasure.erases = "c4".into();
        records.push(erasure);
        let previous: Hash = records[4].hash.as_slice().try_into().unwrap();
        seal(&mut records[5..], previous);
        assert_eq!(
            verify(&records, vec![], vec![], Some(6))
                .unwrap_err()
                .position(),
            2
        );
        // An entry about no customer cannot be emptied at all; nor can the salt go alone.
        let mut records = chain(3);
        records[0].customer.clear();
        seal(&mut records, GENESIS);
        records[0].content = None;
        records[0].salt = None;
        assert!(matches!(
            verify(&records, vec![], vec![], Some(3)),
            Err(Fault::Content { position: 1, .. })
        ));
        let mut records = chain(3);
        records[2].salt = None;
        assert!(matches!(
            verify(&records, vec![], vec![], Some(3)),
            Err(Fault::Content { position: 3, .. })
        ));
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_bad_entry() {
        let base = chain(6);
        let edited_content = {
            let mut r = base.clone();
            r[2].content = Some(b"something else".to_vec());
            r
        };
        assert_eq!(
            verify(&edited_content, vec![], vec![], Some(6))
                .unwrap_err()
                .position(),
            3
        );
        let edited_field = {
            let mut r = base.clone();
            r[3].resource = "customers/other".into();
            r
        };
        let fault = verify(&edited_field, vec![], vec![], Some(6)).unwrap_err();
        assert!(matches!(fault, Fault::Hash { position: 4, .. }), "{fault}");
        let deleted = [&base[..2], &base[3..]].concat();
        assert_eq!(
            verify(&deleted, vec![], vec![], Some(6)).unwrap_err(),
            Fault::Missing {
                expected: 3,
                found: Some(4)
            }
        );
        // Deleted and the rest renumbered: the renumbered entry's hash breaks.
        let renumbered: Vec<Record> = deleted
            .iter()
            .enumerate()
            .map(|(i, r)| Record {
                position: i as i64 + 1,
                ..r.clone()
            })
            .collect();
        assert_eq!(
            verify(&renumbered, vec![], vec![], Some(5))
                .unwrap_err()
                .position(),
            3
        );
        let swapped = {
            let mut r = base.clone();
            r.swap(1, 4);
            r[1].position = 2;
            r[4].position = 5;
            r
        };
        assert_eq!(
            verify(&swapped, vec![], vec![], Some(6))
                .unwrap_err()
                .position(),
            2
        );
        let inserted = {
            let mut r = base.clone();
            let mut extra = r[1].clone();
            extra.event_id = "forged".into();
            r.insert(2, extra);
            for (i, e) in r.iter_mut().enumerate() {
                e.position = i as i64 + 1;
            }
            r
        };
        assert_eq!(
            verify(&inserted, vec![], vec![], Some(7))
                .unwrap_err()
                .position(),
            3
        );
        let truncated = &base[..4];
        assert_eq!(
            verify(truncated, vec![], vec![], Some(6)).unwrap_err(),
            Fault::Head { last: 4, head: 6 }
        );
    }

    #[test]
    fn a_signed_checkpoint_catches_a_rebuilt_chain_and_a_forged_signature() {
        let key = SigningKey::parse(&SigningKey::generate()).unwrap();
        let trusted = vec![key.public_key()];
        let base = chain(6);
        let checkpoint = signed(&key, &base[4]);
        let ok = verify(&base, vec![checkpoint.clone()], trusted.clone(), Some(6)).unwrap();
        assert_eq!((ok.checkpoints, ok.unchecked_checkpoints), (1, 0));
        // An edit with every later hash recomputed passes the chain, not the checkpoint.
        let mut rebuilt = base.clone();
        rebuilt[1].content = Some(b"forged".to_vec());
        let previous: Hash = rebuilt[0].hash.as_slice().try_into().unwrap();
        seal(&mut rebuilt[1..], previous);
        assert!(verify(&rebuilt, vec![], trusted.clone(), Some(6)).is_ok());
        let fault =
            verify(&rebuilt, vec![checkpoint.clone()], trusted.clone(), Some(6)).unwrap_err();
        assert!(
            matches!(fault, Fault::Checkpoint { position: 5, .. }),
            "{fault}"
        );
        // Re-signed with another key: not trusted.
        let other = SigningKey::parse(&SigningKey::generate()).unwrap();
        let fault = verify(
            &rebuilt,
            vec![signed(&other, &rebuilt[4])],
            trusted.clone(),
            Some(6),
        )
        .unwrap_err();
        assert_eq!(
            fault,
            Fault::Checkpoint {
                position: 5,
                why: "signed by a key that is not trusted"
            }
        );
        let mut forged = checkpoint.clone();
        forged.create_time += 1;
        let fault = verify(&base, vec![forged], trusted.clone(), Some(6)).unwrap_err();
        assert_eq!(
            fault,
            Fault::Checkpoint {
                position: 5,
                why: "the signature is not valid"
            }
        );
        // Without a trusted key the checkpoint is compared but its signature not checked.
        assert_eq!(
            verify(&base, vec![checkpoint.clone()], vec![], Some(6))
                .unwrap()
                .unchecked_checkpoints,
            1
        );
        // A checkpoint past the end: the entries it signed were deleted.
        assert_eq!(
            verify(&base[..4], vec![checkpoint], trusted, Some(4)).unwrap_err(),
            Fault::Missing {
                expected: 5,
                found: None
            }
        );
    }

    #[test]
    fn a_range_verifies_from_the_hash_before_it() {
        let base = chain(6);
        let before: Hash = base[2].hash.as_slice().try_into().unwrap();
        let mut c = Chain::new(ORG, (4, before), vec![], vec![]);
        for r in &base[3..] {
            c.check(r).unwrap();
        }
        assert_eq!(c.finish(None).unwrap().entries, 3);
        let mut wrong = Chain::new(ORG, (4, GENESIS), vec![], vec![]);
        assert_eq!(wrong.check(&base[3]).unwrap_err().position(), 4);
    }

    #[test]
    fn signing_keys_parse_from_what_generate_writes_and_nothing_else() {
        assert!(SigningKey::parse(&SigningKey::generate()).is_ok());
        assert!(SigningKey::parse("not base64!").is_err());
        assert!(SigningKey::parse("AAAA").is_err());
        let key = SigningKey::parse(&SigningKey::generate()).unwrap();
        assert_eq!(
            parse_public_key(&public_key_text(&key.public_key())).unwrap(),
            key.public_key()
        );
        assert!(parse_public_key("AAAA").is_err());
    }
}
