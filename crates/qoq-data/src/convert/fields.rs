//! Typed access to the fields of one JSONL row, and the text clean-ups the three formats
//! share. Every error is a short reason that names the key, for a [`crate::BadRow`].

use serde_json::{Map, Value};

/// One parsed JSONL line.
pub type Row = Map<String, Value>;

/// A row-level failure reason (becomes [`crate::BadRow::reason`]).
pub type Reason = String;

/// JSON type name for messages (`a number`, `an object`, ...).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `row[key]` as a string; missing, null or another type is an error naming the key.
pub fn required_str<'a>(row: &'a Row, key: &str) -> Result<&'a str, Reason> {
    match row.get(key) {
        None | Some(Value::Null) => Err(format!("missing key `{key}`")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("`{key}` must be a string, found {}", type_name(v))),
    }
}

/// `row[key]` as a string if present and not null.
pub fn optional_str<'a>(row: &'a Row, key: &str) -> Result<Option<&'a str>, Reason> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!("`{key}` must be a string, found {}", type_name(v))),
    }
}

/// `row[key]` as a number if present and not null.
pub(super) fn optional_f64(row: &Row, key: &str) -> Result<Option<f64>, Reason> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64().map(Some).ok_or_else(|| format!("`{key}` = {n} is not representable as a number"))
        }
        Some(v) => Err(format!("`{key}` must be a number, found {}", type_name(v))),
    }
}

/// `row[key]` as a list of strings; missing or null is an empty list.
pub(super) fn str_list(row: &Row, key: &str) -> Result<Vec<String>, Reason> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("`{key}` must be a list of strings, but item {i} is {}", type_name(other))),
            })
            .collect(),
        Some(v) => Err(format!("`{key}` must be a list of strings, found {}", type_name(v))),
    }
}

/// The first of `keys` present (and not null), with its key.
pub(super) fn first_present<'a>(row: &'a Row, keys: &[&'a str]) -> Option<(&'a str, &'a Value)> {
    keys.iter().find_map(|k| row.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
}

/// The keys of `row` not in `consumed`, for [`crate::Sample::extra`].
pub(super) fn extra_map(row: &Row, consumed: &[&str]) -> Map<String, Value> {
    row.iter().filter(|(k, _)| !consumed.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The question text without the `<image>` / `<video>` placeholders (and the line break
/// right after each), trimmed. The prompt builder inserts the vision tokens from the
/// media themselves.
pub(super) fn strip_placeholders(text: &str) -> String {
    const TAGS: [&str; 2] = ["<image>", "<video>"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((pos, tag)) = TAGS.iter().filter_map(|t| rest.find(t).map(|p| (p, *t))).min() {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + tag.len()..];
        rest = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n')).unwrap_or(rest);
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// The options listed one per line after the last "...following:" of a CLIMB question
/// (e.g. "Answer with one of the following:\nNo PE\nAcute PE"); a leading "- " bullet is
/// dropped. Empty when the question has no such list.
pub(super) fn parse_choices(problem: &str) -> Vec<String> {
    const MARKER: &str = "following:";
    // ASCII lowercasing keeps byte offsets, so `pos` indexes `problem` too.
    let Some(pos) = problem.to_ascii_lowercase().rfind(MARKER) else {
        return Vec::new();
    };
    problem[pos + MARKER.len()..]
        .lines()
        .skip(1) // the rest of the "following:" line
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("- ").unwrap_or(l).trim().to_string())
        .collect()
}

/// `train`, `val` or `test` for the usual spellings, else the text as given.
pub(super) fn normalize_split(split: &str) -> String {
    match split.trim().to_ascii_lowercase().as_str() {
        "train" | "training" => "train".into(),
        "val" | "valid" | "validation" | "dev" => "val".into(),
        "test" | "testing" => "test".into(),
        _ => split.trim().to_string(),
    }
}

/// The split named by a file stem (`annotation_valid` -> `val`, `qa_test_mini_mm` ->
/// `test`, `geom_train_upsampled` -> `train`), if any word of it names one.
pub(super) fn split_from_stem(stem: &str) -> Option<String> {
    stem.split(['_', '-', '.', ' ']).map(normalize_split).find(|w| matches!(w.as_str(), "train" | "val" | "test"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn placeholders_and_their_newlines_are_removed() {
        assert_eq!(strip_placeholders("<image>\n<image>\nAbove is a CT.\nNo PE"), "Above is a CT.\nNo PE");
        assert_eq!(strip_placeholders("<video>\r\nQ?"), "Q?");
        assert_eq!(strip_placeholders("<image><image> Patient is 67"), "Patient is 67");
        assert_eq!(strip_placeholders("a <image>\nb"), "a b");
        assert_eq!(strip_placeholders("no tags  "), "no tags");
    }

    #[test]
    fn choices_follow_the_marker() {
        let q = "Which?Answer with one of the following:\nNo Tumor\n\n- Glioma Tumor\n  Has Tumor  ";
        assert_eq!(parse_choices(q), ["No Tumor", "Glioma Tumor", "Has Tumor"]);
        assert!(parse_choices("What is the diagnosis?").is_empty());
        assert!(parse_choices("Pick from the following: a, b").is_empty());
    }

    #[test]
    fn split_from_file_stems() {
        assert_eq!(split_from_stem("annotation_train").as_deref(), Some("train"));
        assert_eq!(split_from_stem("annotation_valid").as_deref(), Some("val"));
        assert_eq!(split_from_stem("qa_val").as_deref(), Some("val"));
        assert_eq!(split_from_stem("qa_test_mini_mm").as_deref(), Some("test"));
        assert_eq!(split_from_stem("geom_valid_mini").as_deref(), Some("val"));
        assert_eq!(split_from_stem("annotation_age_test").as_deref(), Some("test"));
        assert_eq!(split_from_stem("everything"), None);
        assert_eq!(split_from_stem("contest"), None);
    }

    #[test]
    fn typed_access_names_the_key() {
        let r = row(json!({"answer": 3, "images": ["a.png", 4], "videos": "x.mp4", "p": "q"}));
        assert_eq!(required_str(&r, "answer").unwrap_err(), "`answer` must be a string, found a number");
        assert_eq!(required_str(&r, "problem").unwrap_err(), "missing key `problem`");
        assert!(str_list(&r, "images").unwrap_err().contains("item 1 is a number"));
        assert!(str_list(&r, "videos").unwrap_err().contains("`videos` must be a list of strings, found a string"));
        assert!(str_list(&r, "none").unwrap().is_empty());
        assert_eq!(Value::Object(extra_map(&r, &["answer", "images", "videos"])), json!({"p": "q"}));
    }
}
