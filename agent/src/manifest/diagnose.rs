//! Turns TOML and serde errors into manifest errors that say where and what to write instead.
//!
//! The parser's messages ("unknown field `imagee`, expected one of ...", "invalid type: string
//! \"x\", expected a sequence") are accurate but speak serde; this module names the table and
//! key involved, suggests the closest valid key, and gives an example of a correct value.

use std::path::Path;

use super::error::{ErrorKind, ManifestError};
use super::location::{key_at, table_at, Location};
use super::schema::example_for;

/// Converts a TOML deserialization error on `text` (the content of `file`).
pub(super) fn toml_error(err: &toml::de::Error, text: &str, file: &Path) -> ManifestError {
    let offset = err.span().map_or(0, |s| s.start);
    let at = Location::of_offset(text, offset);
    let raw = err
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ");

    if let Some(rest) = raw.strip_prefix("unknown field `") {
        return unknown_key(rest, text, offset, file, at);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        let mut e = ManifestError::new(
            ErrorKind::MissingKey,
            file,
            at,
            format!(
                "missing key `{key}` in {}",
                describe_table(&table_at(text, offset))
            ),
        );
        if let Some(example) = example_for(key) {
            e = e.with_hint(format!("add: {example}"));
        }
        return e;
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        return wrong_type(rest, text, offset, file, at);
    }
    if raw.contains("duplicate key") {
        return ManifestError::new(
            ErrorKind::Syntax,
            file,
            at,
            format!("TOML syntax error: {raw}; each key and table may appear only once, remove or rename the second one"),
        );
    }
    ManifestError::new(
        ErrorKind::Syntax,
        file,
        at,
        format!("TOML syntax error: {raw}"),
    )
    .with_hint(
        "check quotes, brackets and `key = value` syntax on this line (see docs/manifest.md)",
    )
}

/// `rest` is what follows "unknown field `": "NAME`, expected one of `a`, `b`" or
/// "NAME`, expected `a`" or "NAME`, there are no fields".
fn unknown_key(rest: &str, text: &str, offset: usize, file: &Path, at: Location) -> ManifestError {
    let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
    let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let table_path = table_at(text, offset);
    let table = describe_table(&table_path);
    let mut message = format!("unknown key `{key}` in {table}");
    if let Some(home) =
        home_of(key).filter(|home| *home != table_path.as_str() && !valid.contains(&key))
    {
        message.push_str(&format!("; `{key}` belongs in [{home}]"));
    } else if let Some(best) = closest(key, &valid) {
        message.push_str(&format!("; did you mean `{best}`?"));
    }
    if valid.is_empty() {
        message.push_str("; this table takes no keys");
    } else {
        let list = valid
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        message.push_str(&format!(" (valid keys: {list})"));
    }
    let mut e = ManifestError::new(ErrorKind::UnknownKey, file, at, message);
    if let Some(example) = closest(key, &valid).and_then(example_for) {
        e = e.with_hint(format!("write e.g.: {example}"));
    }
    e
}

/// `rest` is what follows "invalid type: ": "FOUND, expected EXPECTED".
fn wrong_type(rest: &str, text: &str, offset: usize, file: &Path, at: Location) -> ManifestError {
    let (found, expected) = rest
        .split_once(", expected ")
        .unwrap_or((rest, "another type"));
    let expected = match expected {
        "a sequence" => "an array",
        "a map" => "a table",
        "u32" | "i64" => "an integer",
        other => other,
    };
    let key = key_at(text, offset);
    let subject = match &key {
        Some(key) => format!("wrong type for `{key}`"),
        None => "wrong type".to_owned(),
    };
    let mut e = ManifestError::new(
        ErrorKind::WrongType,
        file,
        at,
        format!("{subject}: found {found}, expected {expected}"),
    );
    if let Some(example) = key.as_deref().and_then(example_for) {
        e = e.with_hint(format!("write e.g.: {example}"));
    } else if table_at(text, offset).ends_with(".env") && expected == "a string" {
        let literal = found.split('`').nth(1).unwrap_or("...");
        let name = key.as_deref().unwrap_or("NAME");
        e = e.with_hint(format!(
            "environment values are strings: write {name} = \"{literal}\""
        ));
    }
    e
}

/// The table where a key of this schema lives, for keys written in the wrong table.
fn home_of(key: &str) -> Option<&'static str> {
    Some(match key {
        "hostname" => "host",
        "source" => "images.NAME",
        "image" | "entrypoint" | "command" | "env" | "workdir" => "containers.NAME",
        _ => return None,
    })
}

/// "the top level", "[host]", "[containers.web]".
pub(super) fn describe_table(path: &str) -> String {
    if path.is_empty() {
        "the top level".to_owned()
    } else {
        format!("[{path}]")
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    if let Some(alias) = alias_of(&word_lower).filter(|a| candidates.contains(a)) {
        return Some(alias);
    }
    let word_len = word_lower.chars().count();
    candidates
        .iter()
        .map(|&c| (edit_distance(&word_lower, c), c))
        .filter(|&(d, c)| {
            let len = c.chars().count();
            d <= 2.max(len.max(word_len) / 3) && d < len
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// The key of this schema meant by a name other tools use (Docker, Compose, Kubernetes).
fn alias_of(word: &str) -> Option<&'static str> {
    Some(match word {
        "environment" | "environ" | "envs" => "env",
        "working_dir" | "workingdir" | "working-dir" | "cwd" | "dir" => "workdir",
        "cmd" | "args" | "argv" => "command",
        "entry_point" | "entry-point" => "entrypoint",
        "from" | "img" => "image",
        "path" | "src" | "location" => "source",
        "name" | "host_name" => "hostname",
        _ => return None,
    })
}

/// Levenshtein distance in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("image", "image"), 0);
        assert_eq!(edit_distance("imagee", "image"), 1);
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("héllo", "hello"), 1);
    }

    #[test]
    fn closest_suggests_typos_only() {
        let keys = [
            "image",
            "entrypoint",
            "command",
            "env",
            "workdir",
            "hostname",
        ];
        assert_eq!(closest("imagee", &keys), Some("image"));
        assert_eq!(closest("Command", &keys), Some("command"));
        assert_eq!(closest("workingdir", &keys), Some("workdir"));
        assert_eq!(closest("environment", &keys), Some("env"));
        assert_eq!(closest("cmd", &keys), Some("command"));
        assert_eq!(closest("cmd", &["source"]), None);
        assert_eq!(closest("restart", &keys), None);
        assert_eq!(closest("ports", &keys), None);
    }

    fn parse_err(text: &str) -> ManifestError {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            command: Option<Vec<String>>,
            image: Option<String>,
        }
        let err = toml::from_str::<T>(text).unwrap_err();
        toml_error(&err, text, Path::new("m.toml"))
    }

    #[test]
    fn unknown_keys_name_the_key_suggest_and_list() {
        let e = parse_err("image = \"x\"\nimagee = \"y\"\n");
        assert_eq!(e.kind, ErrorKind::UnknownKey);
        assert_eq!((e.line, e.column), (2, 1));
        assert!(
            e.message
                .contains("unknown key `imagee` in the top level; did you mean `image`?"),
            "{}",
            e.message
        );
        assert!(e.message.contains("`command`, `image`"), "{}", e.message);
    }

    #[test]
    fn wrong_types_name_the_key_and_give_an_example() {
        let e = parse_err("command = \"echo hi\"\n");
        assert_eq!(e.kind, ErrorKind::WrongType);
        assert_eq!((e.line, e.column), (1, 11));
        assert_eq!(
            e.message,
            "wrong type for `command`: found string \"echo hi\", expected an array"
        );
        assert!(e.hint.as_deref().unwrap_or("").contains("command = ["));
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let e = parse_err("command = [\"a\"\n");
        assert_eq!(e.kind, ErrorKind::Syntax);
        assert!(!e.message.contains('\n'), "{}", e.message);
        assert!(
            e.message.starts_with("TOML syntax error: "),
            "{}",
            e.message
        );
    }
}
