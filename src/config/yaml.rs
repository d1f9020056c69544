//! YAML → raw types, with errors that name the file, the field path and the line.

use serde::de::DeserializeOwned;
use serde_saphyr::{Location, Options, Spanned};

use crate::error::Diagnostic;

pub type S<T> = Spanned<T>;

/// The line of a location, when the parser knew it.
pub fn line_of(loc: &Location) -> Option<u32> {
    u32::try_from(loc.line()).ok().filter(|l| *l > 0)
}

fn options() -> Options {
    let mut options = Options::default();
    options.with_snippet = false;
    options
}

/// Parses `bytes` (the content of `file`) into `T`.
pub fn parse<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, Diagnostic> {
    parse_inner(file, bytes, false)
}

/// Like [`parse`], but the message never quotes the input: for files that may
/// hold plain secrets by mistake.
pub fn parse_redacted<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, Diagnostic> {
    parse_inner(file, bytes, true)
}

fn parse_inner<T: DeserializeOwned>(
    file: &str,
    bytes: &[u8],
    redact: bool,
) -> Result<T, Diagnostic> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Diagnostic::new(file, "is not UTF-8 text").hint("save the file as UTF-8"))?;
    // The happy path parses without tracking the field path (that costs a
    // string per field); only a file that fails is parsed again, with the
    // path, for the diagnostic. Parsing is deterministic: the second parse
    // fails the same way.
    if let Ok(value) =
        serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
            <T as serde::Deserialize>::deserialize(de)
        })
    {
        return Ok(value);
    }
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let line = e.location().as_ref().and_then(line_of);
        let message = if redact {
            "is not valid YAML for this file".to_string()
        } else {
            clean_message(&e)
        };
        let hint = hint_for(&message);
        let mut d = Diagnostic::new(file, message).field(path).line(line);
        if let Some(h) = hint {
            d = d.hint(h);
        }
        d
    })
}

/// serde-saphyr's message without its own location suffix (we print ours).
fn clean_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    first.trim_end_matches('.').to_string()
}

fn hint_for(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("remove the key or fix its spelling; unknown keys are refused so typos are never ignored".into())
    } else if message.contains("invalid u16") || message.contains("invalid u32") {
        Some("expected a whole number in range (ports: 1-65535)".into())
    } else if message.contains("missing field") {
        Some("add the field; see ../shared/design.md §1 for the file format".into())
    } else {
        None
    }
}
