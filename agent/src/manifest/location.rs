//! Positions in the manifest text.
//!
//! The TOML parser reports byte offsets; operators want `line:column` as their editor shows it.
//! This module turns offsets into 1-based line/column (columns counted in characters, so a
//! multi-byte character is one column) and finds the key or table around an offset, which lets
//! error messages name the key that is wrong even when the parser only gives a span.

/// A 1-based line and column in the manifest text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// The start of the file, used when no better position is known.
    pub const START: Location = Location { line: 1, column: 1 };

    /// The location of byte `offset` in `text`.
    ///
    /// Offsets past the end of the text point just after its last character; an offset in the
    /// middle of a multi-byte character points at that character.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &text[..end];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The location of byte `offset` in bytes that are valid UTF-8 up to `offset`
    /// (used to point at the first invalid byte of a non-UTF-8 file).
    pub fn of_valid_prefix(bytes: &[u8], offset: usize) -> Location {
        let end = offset.min(bytes.len());
        match std::str::from_utf8(&bytes[..end]) {
            Ok(prefix) => Location::of_offset(prefix, prefix.len()),
            Err(e) => {
                // Only reachable if the caller's offset is past the first invalid byte.
                let valid = e.valid_up_to();
                match std::str::from_utf8(&bytes[..valid]) {
                    Ok(prefix) => Location::of_offset(prefix, prefix.len()),
                    Err(_) => Location::START,
                }
            }
        }
    }
}

/// The line of `text` containing byte `offset`, and the byte offset where that line starts.
fn line_around(text: &str, offset: usize) -> (usize, &str) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    (start, &text[start..end])
}

/// Byte positions of `=` signs in `line` that are outside quoted strings and comments.
fn assignment_positions(line: &str) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' => break,
                '=' => positions.push(i),
                _ => {}
            },
        }
    }
    positions
}

/// The (possibly dotted, possibly quoted) key written just before byte `end` of `line`,
/// e.g. `containers.web.image` for `containers.web.image = `.
fn key_before(line: &str, end: usize) -> Option<String> {
    let before = line[..end].trim_end();
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'')))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key: String = before[start..]
        .chars()
        .filter(|&c| c != '"' && c != '\'')
        .collect();
    (!key.is_empty()).then_some(key)
}

/// The key whose value contains byte `offset`: the nearest `key =` before the offset, on its
/// line or on earlier lines (for values that span lines, like multi-line arrays).
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let (mut line_start, line) = line_around(text, offset);
    let mut limit = offset.saturating_sub(line_start).min(line.len());
    let mut line = line;
    loop {
        while !line.is_char_boundary(limit) {
            limit -= 1;
        }
        if let Some(&eq) = assignment_positions(&line[..limit]).last() {
            return key_before(line, eq).map(|k| last_segment(&k).to_owned());
        }
        if line.trim_start().starts_with('[') || line_start == 0 {
            return None;
        }
        let (start, previous) = line_around(text, line_start - 1);
        line_start = start;
        line = previous;
        limit = line.len();
    }
}

/// The last segment of a dotted key.
fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The table that byte `offset` is in, as a dotted path: `containers.web` for a key below
/// `[containers.web]`, `images.busybox` inside `busybox = { ... }` below `[images]`, and the
/// empty string at the top level.
pub fn table_at(text: &str, offset: usize) -> String {
    let (line_start, line) = line_around(text, offset);
    let mut header = String::new();
    let mut scan_end = line_start;
    while scan_end > 0 {
        let (start, candidate) = line_around(text, scan_end - 1);
        let trimmed = candidate.trim();
        if let Some(inner) = trimmed.strip_prefix('[') {
            if let Some(close) = inner.find(']') {
                header = inner[..close]
                    .trim_matches(|c| c == '[' || c == ' ')
                    .split('.')
                    .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\''))
                    .collect::<Vec<_>>()
                    .join(".");
                break;
            }
        }
        scan_end = start;
    }
    let mut path: Vec<String> = if header.is_empty() {
        Vec::new()
    } else {
        vec![header]
    };
    // Keys on the offending line before the offset: an inline table (`busybox = { `) or a
    // dotted key (`containers.web.imagee`) adds to the path.
    let mut upto = offset.saturating_sub(line_start).min(line.len());
    while !line.is_char_boundary(upto) {
        upto -= 1;
    }
    let prefix = &line[..upto];
    if let Some(brace) = prefix.rfind('{') {
        if let Some(&eq) = assignment_positions(&prefix[..brace]).last() {
            if let Some(key) = key_before(prefix, eq) {
                path.push(key);
            }
        }
    }
    let tail = prefix
        .rsplit(['{', ','])
        .next()
        .unwrap_or(prefix)
        .trim_start();
    if let Some(dotted) = tail.rfind('.').map(|i| &tail[..i]) {
        if !dotted.contains(['=', ' ', '"', '\'']) && !dotted.is_empty() {
            path.push(dotted.to_owned());
        }
    }
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    #[test]
    fn offsets_map_to_one_based_lines_and_columns() {
        let text = "ab\ncd\n\nef";
        assert_eq!(Location::of_offset(text, 0), loc(1, 1));
        assert_eq!(Location::of_offset(text, 1), loc(1, 2));
        assert_eq!(Location::of_offset(text, 2), loc(1, 3)); // the newline itself
        assert_eq!(Location::of_offset(text, 3), loc(2, 1));
        assert_eq!(Location::of_offset(text, 6), loc(3, 1));
        assert_eq!(Location::of_offset(text, 8), loc(4, 2));
        assert_eq!(Location::of_offset(text, 100), loc(4, 3));
        assert_eq!(Location::of_offset("", 0), loc(1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is 2 bytes, "€" 3 bytes, "🦀" 4 bytes.
        let text = "# é€🦀\nk = \"ü\" x";
        let x = text.find('x').unwrap();
        assert_eq!(Location::of_offset(text, x), loc(2, 9));
        let crab = text.find('🦀').unwrap();
        assert_eq!(Location::of_offset(text, crab), loc(1, 5));
        // An offset inside a multi-byte character points at that character.
        assert_eq!(Location::of_offset(text, crab + 2), loc(1, 5));
        let after = text.find('\n').unwrap();
        assert_eq!(Location::of_offset(text, after), loc(1, 6));
    }

    #[test]
    fn invalid_utf8_is_located_after_the_valid_prefix() {
        let bytes = b"version = 1\n# caf\xc3\xa9 \xff\n";
        let bad = bytes.iter().position(|&b| b == 0xff).unwrap();
        assert_eq!(Location::of_valid_prefix(bytes, bad), loc(2, 8));
        assert_eq!(Location::of_valid_prefix(bytes, bytes.len()), loc(2, 8));
        assert_eq!(Location::of_valid_prefix(b"\xff", 0), loc(1, 1));
    }

    #[test]
    fn key_at_finds_the_key_of_a_value() {
        let text = "[containers.web]\ncommand = [\"a=b\", 1]\nenv = { A = 2 }\n";
        assert_eq!(
            key_at(text, text.find('1').unwrap()).as_deref(),
            Some("command")
        );
        assert_eq!(key_at(text, text.find('2').unwrap()).as_deref(), Some("A"));
        let multi = "command = [\n  \"x=y\",\n  3,\n]\n";
        assert_eq!(
            key_at(multi, multi.find('3').unwrap()).as_deref(),
            Some("command")
        );
        let dotted = "containers.web.workdir = 5\n";
        assert_eq!(
            key_at(dotted, dotted.find('5').unwrap()).as_deref(),
            Some("workdir")
        );
        let header = "[host]\n";
        assert_eq!(key_at(header, 1), None);
    }

    #[test]
    fn table_at_names_the_enclosing_table() {
        let text =
            "version = 1\n[images]\nbusybox = { sourc = \"x\" }\n[containers.web]\nimagee = 1\n";
        assert_eq!(table_at(text, 0), "");
        assert_eq!(
            table_at(text, text.find("sourc").unwrap()),
            "images.busybox"
        );
        assert_eq!(
            table_at(text, text.find("imagee").unwrap()),
            "containers.web"
        );
        let dotted = "version = 1\ncontainers.db.imagee = 1\n";
        assert_eq!(
            table_at(dotted, dotted.find("imagee").unwrap()),
            "containers.db"
        );
        let quoted = "[ containers . \"web\" ]\nx = 1\n";
        assert_eq!(
            table_at(quoted, quoted.find('x').unwrap()),
            "containers.web"
        );
    }
}
