//! The ```json fenced blocks of a response, parsed strictly as JSON or, when asked, the way
//! the original's `ast.literal_eval(text.replace("'", '"'))` fallback would read them.
//!
//! The lenient reader accepts only the JSON-shaped part of Python literal syntax: lists,
//! dicts, double-quoted strings, numbers, `True`/`False`/`None` (not JSON's `true`/`false`/
//! `null`, which Python does not know), and trailing commas. Tuples, sets and comments are refused. Non-finite numbers (`1e400`)
//! become `null`, so they can never count as a coordinate.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::{Map, Number, Value};

/// One fenced block: the info word after the opening fence (`json`, `python`, or empty)
/// and the text up to the closing fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencedBlock<'a> {
    pub info: &'a str,
    pub content: &'a str,
}

const FENCE: &str = "```";

/// The closed fenced blocks of `text`, in order. An opening fence without a closing one
/// ends the list.
pub fn fenced_blocks(text: &str) -> Vec<FencedBlock<'_>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(open) = find_fence(rest) {
        let after = &rest[open + FENCE.len()..];
        let info_len = info_len(after);
        let body = &after[info_len..];
        let Some(close) = find_fence(body) else { break };
        blocks.push(FencedBlock { info: &after[..info_len], content: &body[..close] });
        rest = &body[close + FENCE.len()..];
    }
    blocks
}

/// Byte offset of the next ``` (SIMD substring search).
pub fn find_fence(text: &str) -> Option<usize> {
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(FENCE));
    FINDER.find(text.as_bytes())
}

/// Length of the info word (`json`, `c++`, ...) at the start of `after_fence`.
fn info_len(after_fence: &str) -> usize {
    after_fence.bytes().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+')).count()
}

/// How a block's content was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Json,
    /// Only the lenient (literal_eval-like) reader accepted it.
    Lenient,
}

impl FencedBlock<'_> {
    /// Untagged or tagged `json` (any case): a block tagged `python`, `text`, ... is not
    /// read as JSON, as the original's ```(?:json)? pattern did not read it.
    pub fn may_hold_json(&self) -> bool {
        self.info.is_empty() || self.info.eq_ignore_ascii_case("json")
    }
}

/// Parse one block: strict JSON, then (if `lenient`) the lenient reader.
pub fn parse_block(block: &FencedBlock<'_>, lenient: bool) -> Option<(Value, Parsed)> {
    if !block.may_hold_json() {
        return None;
    }
    let trimmed = block.content.trim();
    if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
        return Some((value, Parsed::Json));
    }
    if lenient {
        return parse_lenient(trimmed).map(|v| (v, Parsed::Lenient));
    }
    None
}

/// The value the boxes are read from: the first block that parses as JSON; failing that
/// (and if `lenient`), the first one the lenient reader accepts. Mirrors the original's
/// search order.
pub fn first_parsed_value(blocks: &[FencedBlock<'_>], lenient: bool) -> Option<Value> {
    let candidates = || blocks.iter().filter(|b| b.may_hold_json()).map(|b| b.content.trim());
    match candidates().find_map(|c| serde_json::from_str::<Value>(c).ok()) {
        Some(v) => Some(v),
        None if lenient => candidates().find_map(parse_lenient),
        None => None,
    }
}

/// Nesting deeper than this is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 128;

/// Read Python-literal text after the original's quote replacement (`'` -> `"`).
pub fn parse_lenient(text: &str) -> Option<Value> {
    let replaced = text.replace('\'', "\"");
    let mut p = Lenient { s: replaced.as_bytes(), i: 0 };
    let value = p.value(0)?;
    p.skip_ws();
    (p.i == p.s.len()).then_some(value)
}

struct Lenient<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lenient<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.sequence(b']', |p| {
                    items.push(p.value(depth + 1)?);
                    Some(())
                })?;
                Some(Value::Array(items))
            }
            b'{' => {
                self.i += 1;
                let mut map = Map::new();
                self.sequence(b'}', |p| {
                    let key = match p.value(depth + 1)? {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    if !p.eat(b':') {
                        return None;
                    }
                    map.insert(key, p.value(depth + 1)?);
                    Some(())
                })?;
                Some(Value::Object(map))
            }
            b'"' => self.string().map(Value::String),
            b'+' | b'-' | b'.' | b'0'..=b'9' => self.number(),
            _ => self.word(),
        }
    }

    /// Comma-separated items up to `close`, a trailing comma allowed.
    fn sequence(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            if self.eat(close) {
                return Some(());
            }
            item(self)?;
            if !self.eat(b',') {
                return self.eat(close).then_some(());
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\n' => return None,
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'\\' | b'"' | b'/' => out.push(e),
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            self.i += 4;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        // Python keeps unknown escapes verbatim.
                        other => out.extend_from_slice(&[b'\\', other]),
                    }
                }
                _ => out.push(b),
            }
        }
        None
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len() && matches!(self.s[self.i], b'+' | b'-' | b'.' | b'e' | b'E' | b'_' | b'0'..=b'9') {
            self.i += 1;
        }
        let text: String = std::str::from_utf8(&self.s[start..self.i]).ok()?.replace('_', "");
        // One sign at most: literal_eval refuses `--2`.
        let (negative, digits) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text.as_str()),
        };
        if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return None;
        }
        // Python integers have no leading zeros ("007" is a syntax error).
        if digits.len() > 1 && digits.starts_with('0') && digits.as_bytes()[1].is_ascii_digit() {
            return None;
        }
        let is_int = digits.bytes().all(|b| b.is_ascii_digit());
        if is_int {
            if let Ok(n) = digits.parse::<u64>() {
                return Some(if negative {
                    i64::try_from(n).map(|n| Value::from(-n)).unwrap_or_else(|_| float(-(n as f64)))
                } else {
                    Value::from(n)
                });
            }
        }
        let x: f64 = digits.parse().ok()?;
        Some(float(if negative { -x } else { x }))
    }

    fn word(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphabetic() {
            self.i += 1;
        }
        match &self.s[start..self.i] {
            b"True" => Some(Value::Bool(true)),
            b"False" => Some(Value::Bool(false)),
            b"None" => Some(Value::Null),
            _ => None,
        }
    }
}

/// A float as JSON; non-finite values (Python's `1e400` is `inf`) become `null`.
fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_in_order_until_an_unclosed_fence() {
        let t = "a ```json\n[1]\n``` b ```[2]``` c ```python\nx``` d ```open";
        let blocks = fenced_blocks(t);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0], FencedBlock { info: "json", content: "\n[1]\n" });
        assert_eq!(blocks[1], FencedBlock { info: "", content: "[2]" });
        assert_eq!(blocks[2].info, "python");
        assert!(fenced_blocks("no fences").is_empty());
        assert!(fenced_blocks("```json [1]").is_empty());
    }

    #[test]
    fn strict_json_first_then_lenient() {
        let blocks = fenced_blocks("```{'a': 1,}``` ```[1, 2]```");
        assert_eq!(first_parsed_value(&blocks, true), Some(json!([1, 2])));
        let blocks = fenced_blocks("```{'a': 1,}``` ```python\n[3]```");
        assert_eq!(first_parsed_value(&blocks, false), None);
        assert_eq!(first_parsed_value(&blocks, true), Some(json!({"a": 1})));
    }

    #[test]
    fn lenient_reader_accepts_python_literals_only_as_far_as_json_shape() {
        let v = parse_lenient("[{'bbox_2d': [1, 2.5, -3, 4e2], 'label': 'x',}, True, None,]").unwrap();
        assert_eq!(v, json!([{"bbox_2d": [1, 2.5, -3, 400.0], "label": "x"}, true, null]));
        assert_eq!(parse_lenient("[1e400, -1e400]"), Some(json!([null, null])));
        assert_eq!(parse_lenient("[1_000, +5, -2, .5]"), Some(json!([1000, 5, -2, 0.5])));
        assert_eq!(parse_lenient("{1: 'a'}"), Some(json!({"1": "a"})));
        for bad in [
            "(1, 2)", "{1, 2}", "[1] # c", "--2", "[null]", "[true]", "[NaN]", "[inf]", "007", "[1 2]", "{'a' 1}",
            "'x", "", "[,]",
        ] {
            assert_eq!(parse_lenient(bad), None, "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_lenient(&deep), None);
    }
}
