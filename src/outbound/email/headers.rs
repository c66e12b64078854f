//! Header values that cannot break out of their header, encoded as RFC 2047 and
//! RFC 5322 want them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lettre::message::header::{HeaderName, HeaderValue};

/// Longest subject, in characters.
pub(super) const MAX_SUBJECT: usize = 180;

/// UTF-8 bytes per RFC 2047 encoded word: 52 base64 characters make a 64-character
/// word, so even the first line (`Subject: ` and one word) stays within the 76
/// characters RFC 2047 allows a line with encoded words.
const ENCODED_WORD_BYTES: usize = 39;

/// A header value that cannot break out of its header: control characters (CR and
/// LF among them) and bidirectional overrides become spaces, runs of white space one
/// space, and it is cut to `max` characters.
pub(super) fn header_text(raw: &str, max: usize) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if clean.chars().count() > max {
        clean.chars().take(max - 1).collect::<String>() + "…"
    } else {
        clean
    }
}

/// `text` as RFC 2047 encoded words (UTF-8, base64), each whole characters and
/// within the RFC's length, on folded lines: a reader decodes it to exactly `text`,
/// and it holds nothing but printable ASCII and the folds.
fn encoded_words(text: &str) -> String {
    let mut words = vec![];
    let mut chunk = String::new();
    for c in text.chars() {
        if !chunk.is_empty() && chunk.len() + c.len_utf8() > ENCODED_WORD_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?utf-8?b?{}?=", BASE64.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// The Subject header for `text` (made safe by [`header_text`] first): every reader
/// shows exactly that text, and nothing in it can start another header.
///
/// lettre encodes words with non-ASCII characters (and CR or LF) itself, but writes
/// printable ASCII as it is, even text that reads as an RFC 2047 encoded word
/// (`=?utf-8?B?SGVsbG8=?=`), which readers would then decode into something else.
/// RFC 2047 (section 5) wants such text encoded. So lettre writes plain ASCII text,
/// and anything else is encoded here, whole.
pub(super) fn subject_header(text: &str) -> HeaderValue {
    let name = HeaderName::new_from_ascii_str("Subject");
    let text = header_text(text, MAX_SUBJECT);
    if text.bytes().all(|b| matches!(b, b' '..=b'~')) && !text.contains("=?") {
        HeaderValue::new(name, text)
    } else {
        let encoded = encoded_words(&text);
        HeaderValue::dangerous_new_pre_encoded(name, text, encoded)
    }
}

/// Whether `id` is a message id as RFC 5322 writes one, `<left@right>` in printable
/// ASCII with no white space, brackets, quotes or second `@`: only such ids go into
/// Message-ID, In-Reply-To and References.
pub(super) fn is_message_id(id: &str) -> bool {
    let Some((left, right)) = id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .and_then(|s| s.split_once('@'))
    else {
        return false;
    };
    let atoms = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_graphic()
                    && !matches!(
                        b,
                        b'<' | b'>'
                            | b'@'
                            | b'"'
                            | b'\\'
                            | b'('
                            | b')'
                            | b','
                            | b';'
                            | b':'
                            | b'['
                            | b']'
                    )
            })
    };
    atoms(left) && atoms(right)
}

/// The Message-ID of email `email_id` sent from `domain`; a domain that cannot stand in
/// a message id as it is (an internationalized one) gives way to a reserved name.
pub(super) fn message_id(email_id: &str, domain: &str) -> String {
    let id = format!("<{email_id}@{domain}>");
    if is_message_id(&id) {
        id
    } else {
        format!("<{email_id}@liaison.invalid>")
    }
}

#[cfg(test)]
mod tests {
    use lettre::Message;
    use mail_parser::MessageParser;

    use super::*;

    #[test]
    fn header_text_cannot_inject_headers() {
        assert_eq!(
            header_text("Ada\r\nBcc: evil@example.com", 100),
            "Ada Bcc: evil@example.com"
        );
        assert_eq!(header_text("a\u{202e}b\u{7f}c\td", 100), "a b c d");
        assert_eq!(header_text(&"x".repeat(10), 5).chars().count(), 5);
    }

    /// The Subject header as it goes on the wire, and as a reader decodes it.
    fn subject_on_the_wire(text: &str) -> (String, String) {
        let message = Message::builder()
            .from("hub@liaison.example".parse().unwrap())
            .to("ann@vendor.example".parse().unwrap())
            .raw_header(subject_header(text))
            .body(String::from("body"))
            .unwrap()
            .formatted();
        let raw = String::from_utf8(message.clone()).unwrap();
        let header = raw
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .split("\r\nSubject: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .scan(true, |first, line| {
                let keep = std::mem::take(first) || line.starts_with(' ');
                keep.then(|| line.to_owned())
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        let decoded = MessageParser::default()
            .parse(&message)
            .unwrap()
            .subject()
            .unwrap()
            .to_owned();
        (header, decoded)
    }

    #[test]
    fn subjects_decode_to_exactly_their_text_and_cannot_inject_headers() {
        let (raw, decoded) = subject_on_the_wire("[Liaison] Case: Fridge not cooling");
        assert_eq!(
            raw, "[Liaison] Case: Fridge not cooling",
            "plain ASCII stays plain"
        );
        assert_eq!(decoded, "[Liaison] Case: Fridge not cooling");
        for text in [
            "=?utf-8?B?SGVsbG8=?=",
            "[Liaison] =?utf-8?B?SGVsbG8=?=: Customer updated",
            "[Liaison] Zoë Ångström: Customer updated: given_name",
            "Zoë =?utf-8?B?SGVsbG8=?= and a long tail of words that needs folding over several encoded words ✓",
        ] {
            let (raw, decoded) = subject_on_the_wire(text);
            assert_eq!(decoded, text);
            assert!(raw.starts_with("=?utf-8?b?"), "{raw}");
            assert!(!raw.contains("SGVsbG8=?="), "{raw}");
            assert!(raw.is_ascii());
            for line in raw.split("\r\n") {
                assert!(line.len() <= 76 - "Subject: ".len(), "{line}");
            }
        }
        let (raw, decoded) = subject_on_the_wire("Ada\r\nBcc: x@y");
        assert!(!raw.contains("\r\nBcc"), "{raw}");
        assert_eq!(decoded, "Ada Bcc: x@y");
        let (raw, _) = subject_on_the_wire("Zoë\r\nBcc: x@y");
        assert!(!raw.contains("\r\nBcc"), "{raw}");
    }

    #[test]
    fn only_message_ids_reach_the_threading_headers() {
        assert!(is_message_id("<0198f0e4-7c1a@liaison.example>"));
        for bad in [
            "0198@liaison.example",
            "<0198@liaison.example>\r\nBcc: x@y",
            "<a b@liaison.example>",
            "<a@b@c>",
            "<@liaison.example>",
            "<0198@bücher.example>",
        ] {
            assert!(!is_message_id(bad), "{bad:?}");
        }
        assert_eq!(
            message_id("0198", "liaison.example"),
            "<0198@liaison.example>"
        );
        assert_eq!(
            message_id("0198", "bücher.example"),
            "<0198@liaison.invalid>"
        );
    }
}
