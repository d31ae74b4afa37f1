//! The final answer: the last closed `\boxed{...}`, its label set, and the text outside
//! `<think>` blocks.
//!
//! Every scan here is a single pass over the bytes, so adversarial responses (megabytes of
//! `\boxed{`, deeply nested braces) cost linear time and memory proportional to the number
//! of boxes still open, never quadratic time.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use memchr::memmem::Finder;

const BOXED: &[u8] = b"\\boxed{";

/// Content of the last `\boxed{...}` whose braces close, trimmed; `None` when no box closes.
///
/// "Last" is by opening position, as in the original (`rfind`): in `\boxed{a \boxed{b}}` it
/// is `b`. Unlike the original, an unterminated final box does not hide an earlier closed
/// one, and LaTeX-escaped braces `\{` `\}` do not count for matching.
///
/// A doubled backslash before `boxed` (`\\boxed{x}`, as text escaped twice) still opens a
/// box, as in the original.
///
/// ```
/// use qoq_rewards::answer::last_boxed;
/// assert_eq!(last_boxed(r"\boxed{a} then \boxed{b, {c}}"), Some("b, {c}"));
/// assert_eq!(last_boxed(r"\boxed{a} \boxed{unterminated"), Some("a"));
/// assert_eq!(last_boxed("no box"), None);
/// ```
pub fn last_boxed(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    // Open boxes as (brace depth outside the box, content start); plain braces only move
    // `depth`, so memory grows with open boxes, not with nesting.
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    // Jump from one `\`, `{` or `}` to the next (SIMD): prose between them is skipped.
    while let Some(skip) = memchr::memchr3(b'\\', b'{', b'}', &bytes[i..]) {
        i += skip;
        match bytes[i] {
            b'\\' if bytes[i..].starts_with(BOXED) => {
                open.push((depth, i + BOXED.len()));
                depth += 1;
                i += BOXED.len();
                continue;
            }
            // `\{` and `\}` are escaped braces, not grouping.
            b'\\' if matches!(bytes.get(i + 1), Some(b'{' | b'}')) => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' if depth > 0 => {
                depth -= 1;
                if let Some(&(box_depth, start)) = open.last() {
                    if box_depth == depth {
                        open.pop();
                        if best.is_none_or(|(s, _)| start > s) {
                            best = Some((start, i));
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    // Both ends sit next to ASCII bytes, so they are char boundaries.
    best.map(|(s, e)| text[s..e].trim())
}

/// The response with `<think>...</think>` blocks removed.
///
/// A leading `</think>` with no opener (chat templates that open the block in the prompt)
/// drops everything before it; an unclosed `<think>` drops everything after it.
pub fn strip_think(text: &str) -> Cow<'_, str> {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    static OPEN_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(OPEN));
    static CLOSE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(CLOSE));
    let find_open = |hay: &str| OPEN_FINDER.find(hay.as_bytes());
    let find_close = |hay: &str| CLOSE_FINDER.find(hay.as_bytes());
    let mut rest = text;
    if let Some(close) = find_close(rest) {
        if find_open(rest).is_none_or(|open| open > close) {
            rest = &rest[close + CLOSE.len()..];
        }
    }
    let Some(mut open) = find_open(rest) else { return Cow::Borrowed(rest) };
    let mut out = String::with_capacity(rest.len());
    loop {
        out.push_str(&rest[..open]);
        match find_close(&rest[open..]) {
            Some(close) => rest = &rest[open + close + CLOSE.len()..],
            None => return Cow::Owned(out),
        }
        match find_open(rest) {
            Some(next) => open = next,
            None => break,
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// How label text is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelOptions {
    /// Lowercase, collapse whitespace runs to one space, and unwrap `\text{..}`-style
    /// wrappers before splitting. `false` compares the trimmed labels exactly, like the
    /// original (case-sensitive).
    pub normalize: bool,
}

impl Default for LabelOptions {
    fn default() -> Self {
        Self { normalize: true }
    }
}

/// Separators in the order the spec tries them: the first one present splits the text.
pub const SEPARATORS: [&str; 5] = [", ", " and ", " & ", ",", "&"];

/// The label set of an answer: split on the first separator present, trim, drop empties.
///
/// ```
/// use qoq_rewards::answer::{label_set, LabelOptions};
/// let labels = label_set("Pneumonia and  Effusion", LabelOptions::default());
/// assert!(labels.contains("pneumonia") && labels.contains("effusion"));
/// ```
pub fn label_set(text: &str, options: LabelOptions) -> HashSet<String> {
    let text = if options.normalize { normalize(text) } else { text.to_string() };
    let parts: Vec<&str> = match SEPARATORS.iter().find(|sep| text.contains(*sep)) {
        Some(sep) => text.split(sep).collect(),
        None => vec![text.as_str()],
    };
    parts.into_iter().map(|l| l.trim_matches(is_space)).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// The labels of a ground-truth answer: those of its last closed `\boxed{}` when it has
/// one (answers stored boxed), else of the whole text.
pub fn answer_label_set(answer: &str, options: LabelOptions) -> HashSet<String> {
    label_set(last_boxed(answer).unwrap_or(answer), options)
}

/// Whitespace as Python's `str.strip()` sees it: Unicode whitespace plus the ASCII
/// separators U+001C..U+001F, so exact mode trims like the original.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// LaTeX wrappers whose content is the label itself (`\boxed{\text{Pneumonia}}`).
const TEXT_WRAPPERS: [&str; 6] = ["\\text{", "\\textbf{", "\\textit{", "\\textrm{", "\\mathrm{", "\\mathbf{"];

/// Lowercase, unwrap [`TEXT_WRAPPERS`], collapse whitespace runs, trim.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // For each open brace: whether it belongs to a wrapper (its `}` is dropped too).
    let mut braces: Vec<bool> = Vec::new();
    let mut pending_space = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            if let Some(w) = TEXT_WRAPPERS.iter().find(|w| rest.starts_with(*w)) {
                braces.push(true);
                rest = &rest[w.len()..];
                continue;
            }
        }
        rest = &rest[c.len_utf8()..];
        match c {
            '{' => braces.push(false),
            '}' if braces.last() == Some(&true) => {
                braces.pop();
                continue;
            }
            '}' => {
                braces.pop();
            }
            _ => {}
        }
        if is_space(c) {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_closed_box_by_opening_position() {
        assert_eq!(last_boxed(r"\boxed{a \boxed{b}}"), Some("b"));
        assert_eq!(last_boxed(r"\boxed{x}\boxed{y}"), Some("y"));
        assert_eq!(last_boxed(r"\boxed{ spaced }"), Some("spaced"));
        assert_eq!(last_boxed(r"\boxed{}"), Some(""));
        assert_eq!(last_boxed(r"\boxed{a}\boxed{b"), Some("a"));
        assert_eq!(last_boxed(r"\boxed{a}\boxed{{b}"), Some("a"));
        assert_eq!(last_boxed(r"}}} \boxed{a}"), Some("a"));
        assert_eq!(last_boxed(r"\boxed{\{x\}}"), Some(r"\{x\}"));
        assert_eq!(last_boxed(r"\boxed{a \} b}"), Some(r"a \} b"));
        assert_eq!(last_boxed(r"\\boxed{x}"), Some("x"));
        assert_eq!(last_boxed(r"\boxed"), None);
        assert_eq!(last_boxed(r"\boxed{"), None);
        assert_eq!(last_boxed("é \\boxed{ü} ö"), Some("ü"));
    }

    #[test]
    fn pathological_inputs_are_linear() {
        let many = r"\boxed{".repeat(500_000);
        assert_eq!(last_boxed(&many), None);
        let nested = format!("{}{}", "{".repeat(1_000_000), "}".repeat(1_000_000));
        assert_eq!(last_boxed(&format!(r"\boxed{{{nested}}}")).map(str::len), Some(nested.len()));
        let repeated = r"\boxed{}".repeat(100_000);
        assert_eq!(last_boxed(&repeated), Some(""));
    }

    #[test]
    fn think_blocks_are_removed() {
        assert_eq!(strip_think("<think>a</think>b<think>c</think>d"), "bd");
        assert_eq!(strip_think("reasoning</think>answer"), "answer");
        assert_eq!(strip_think("x<think>never closed"), "x");
        assert_eq!(strip_think("plain"), "plain");
    }

    #[test]
    fn separators_in_spec_order() {
        let exact = LabelOptions { normalize: false };
        let set = |t: &str| {
            let mut v: Vec<String> = label_set(t, exact).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(set("a, b and c"), ["a", "b and c"]);
        assert_eq!(set("a and b & c"), ["a", "b & c"]);
        assert_eq!(set("a & b,c"), ["a", "b,c"]);
        assert_eq!(set("a,b&c"), ["a", "b&c"]);
        assert_eq!(set("a&b"), ["a", "b"]);
        assert_eq!(set("a, , b,"), ["a", "b,"]);
        assert_eq!(set("  "), Vec::<String>::new());
        assert_eq!(set("Pneumonia"), ["Pneumonia"]);
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("  Left\tLower \n Lobe  "), "left lower lobe");
        assert_eq!(normalize(r"\text{Pneumonia}, \textbf{Edema}"), "pneumonia, edema");
        assert_eq!(normalize(r"\text{a {b}}"), "a {b}");
        assert_eq!(normalize("ÄB"), "äb");
        let n = LabelOptions::default();
        assert_eq!(label_set("A AND B", n), label_set("b, a", n));
    }
}
