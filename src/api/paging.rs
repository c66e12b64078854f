//! AIP-158 pagination: `page_size` and opaque `page_token`.
//!
//! A token holds the key of the last item returned (lists are ordered by an immutable,
//! unique key, so a page never skips or repeats an item however the data changes
//! between calls) and a fingerprint of the query it belongs to, so it cannot be
//! replayed against a different query.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger requests are served this many; bigger pages only make slow responses.
pub const MAX_PAGE_SIZE: usize = 1000;

pub struct PageRequest {
    pub size: usize,
    /// Continue after the item with this key.
    pub after: Option<String>,
    fingerprint: String,
}

impl PageRequest {
    /// `query` names everything besides the page that shapes the list (method, parent,
    /// filters); a token is valid only for the same `query`.
    pub fn parse(page_size: i32, page_token: &str, query: &str) -> Result<Self> {
        let size = match page_size {
            n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let fingerprint = fingerprint(query);
        let after = if page_token.is_empty() {
            None
        } else {
            let invalid = || {
                Error::invalid(
                    "page_token",
                    "is not a token this list returned; start again without one",
                )
            };
            let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| invalid())?;
            let text = String::from_utf8(bytes).map_err(|_| invalid())?;
            let (fp, after) = text.split_once(':').ok_or_else(invalid)?;
            if fp != fingerprint {
                return Err(Error::invalid(
                    "page_token",
                    "belongs to a different query; send the same filters as the first page",
                ));
            }
            Some(after.to_owned())
        };
        Ok(Self {
            size,
            after,
            fingerprint,
        })
    }

    /// The token for the page after the one that ended at `after` (empty if none).
    pub fn next_token(&self, after: Option<String>) -> String {
        after
            .map(|a| URL_SAFE_NO_PAD.encode(format!("{}:{a}", self.fingerprint)))
            .unwrap_or_default()
    }
}

fn fingerprint(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_continue_only_the_query_they_came_from() {
        let first = PageRequest::parse(10, "", "members:acme").unwrap();
        let token = first.next_token(Some("k1".into()));
        assert_eq!(
            PageRequest::parse(10, &token, "members:acme")
                .unwrap()
                .after
                .as_deref(),
            Some("k1")
        );
        assert!(PageRequest::parse(10, &token, "members:other").is_err());
        assert!(PageRequest::parse(10, "garbage!", "members:acme").is_err());
        assert_eq!(first.next_token(None), "");
    }

    #[test]
    fn sizes_default_and_clamp() {
        assert_eq!(
            PageRequest::parse(0, "", "q").unwrap().size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(
            PageRequest::parse(5000, "", "q").unwrap().size,
            MAX_PAGE_SIZE
        );
        assert!(PageRequest::parse(-1, "", "q").is_err());
    }
}
