//! What a `CREATE INDEX` statement says about its keys and its `WHERE`
//! clause, as far as a restore can build such an index from its table's
//! rows (see [`indexbuild`](super::indexbuild)): each key is a column or
//! `lower(column)` / `upper(column)`, and a partial index's condition is
//! `column IS NULL` or `column IS NOT NULL`. Anything else is
//! [`Key::Other`] or [`Where::Other`], and the restore leaves the index to
//! SQLite. Collation and order are not read here: SQLite's
//! `pragma_index_xinfo` gives them.
//!
//! The statement is the text SQLite keeps in `sqlite_schema`; it is split
//! into tokens as SQLite's tokenizer does for what matters here (quoted
//! identifiers of all four kinds, string literals, comments), and
//! anything unexpected gives `None`.

/// A key term of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A table column, by name as written.
    Column(String),
    /// `lower(column)` or `upper(column)`.
    Fold(Fold, String),
    /// Any other expression.
    Other,
}

/// SQLite's built-in `lower()` and `upper()` (ASCII letters only, as
/// SQLite without ICU folds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    Lower,
    Upper,
}

impl Fold {
    pub fn byte(self, b: u8) -> u8 {
        match self {
            Fold::Lower => b.to_ascii_lowercase(),
            Fold::Upper => b.to_ascii_uppercase(),
        }
    }
}

/// A partial index's condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// `column IS NULL` (`ISNULL`): `not_null` false; `column IS NOT NULL`
    /// (`NOTNULL`, `NOT NULL`): true.
    Null { column: String, not_null: bool },
    /// Any other condition.
    Other,
}

/// The keys of an index, in order, and its condition if it is partial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSql {
    pub keys: Vec<Key>,
    pub condition: Option<Where>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A bare word (keyword or identifier), as written.
    Word(String),
    /// A quoted identifier, unquoted.
    Quoted(String),
    /// A string literal, a number, or anything else that is one token.
    Literal,
    /// One punctuation character.
    Punct(char),
}

impl Token {
    fn is_word(&self, w: &str) -> bool {
        matches!(self, Token::Word(x) if x.eq_ignore_ascii_case(w))
    }

    /// The identifier a token names, quoted or not.
    fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

fn tokens(sql: &str) -> Option<Vec<Token>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // A quoted run closed by `close`, a doubled `close` standing for one.
    let quoted = |i: &mut usize, close: u8| -> Option<String> {
        let mut s = Vec::new();
        *i += 1;
        loop {
            let c = *b.get(*i)?;
            *i += 1;
            if c == close {
                if b.get(*i) == Some(&close) && close != b']' {
                    s.push(close);
                    *i += 1;
                } else {
                    return String::from_utf8(s).ok();
                }
            } else {
                s.push(c);
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += end + 4;
            }
            b'"' => out.push(Token::Quoted(quoted(&mut i, b'"')?)),
            b'`' => out.push(Token::Quoted(quoted(&mut i, b'`')?)),
            b'[' => out.push(Token::Quoted(quoted(&mut i, b']')?)),
            b'\'' => {
                quoted(&mut i, b'\'')?;
                out.push(Token::Literal);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Token::Word(sql[start..i].to_owned()));
            }
            _ if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            _ => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
        }
    }
    Some(out)
}

/// Reads a `CREATE [UNIQUE] INDEX ... ON table (keys) [WHERE condition]`
/// statement; `None` if it is not one, or not one this reads.
pub fn parse(sql: &str) -> Option<IndexSql> {
    let t = tokens(sql)?;
    // The first bare ON: the index's name, if it is "on", is quoted.
    let on = t.iter().position(|x| x.is_word("ON"))?;
    if !t.first()?.is_word("CREATE") {
        return None;
    }
    // The table's name, then the key list.
    let open = on + 2;
    if t.get(open) != Some(&Token::Punct('(')) {
        return None;
    }
    let mut depth = 0usize;
    let mut terms: Vec<&[Token]> = Vec::new();
    let mut start = open + 1;
    let mut close = None;
    for (i, x) in t.iter().enumerate().skip(open + 1) {
        match x {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') if depth == 0 => {
                terms.push(&t[start..i]);
                close = Some(i);
                break;
            }
            Token::Punct(')') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                terms.push(&t[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let close = close?;
    let keys = terms.into_iter().map(key).collect();
    let rest = &t[close + 1..];
    let condition = match rest.split_first() {
        None => None,
        Some((w, cond)) if w.is_word("WHERE") => Some(condition(cond)),
        Some(_) => return None,
    };
    Some(IndexSql { keys, condition })
}

/// A key term without its `COLLATE name` and `ASC` / `DESC`.
fn key(term: &[Token]) -> Key {
    let mut term = term;
    if let Some((last, before)) = term.split_last() {
        if last.is_word("ASC") || last.is_word("DESC") {
            term = before;
        }
    }
    if term.len() >= 2 && term[term.len() - 2].is_word("COLLATE") {
        term = &term[..term.len() - 2];
    }
    match term {
        [col] => col.name().map_or(Key::Other, |n| Key::Column(n.to_owned())),
        [Token::Word(f), Token::Punct('('), col, Token::Punct(')')] => {
            let fold = if f.eq_ignore_ascii_case("lower") {
                Fold::Lower
            } else if f.eq_ignore_ascii_case("upper") {
                Fold::Upper
            } else {
                return Key::Other;
            };
            col.name()
                .map_or(Key::Other, |n| Key::Fold(fold, n.to_owned()))
        }
        _ => Key::Other,
    }
}

fn condition(cond: &[Token]) -> Where {
    let Some((col, tail)) = cond.split_first() else {
        return Where::Other;
    };
    let Some(column) = col.name().map(str::to_owned) else {
        return Where::Other;
    };
    let words: Vec<&str> = tail
        .iter()
        .map(|x| match x {
            Token::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    if words.len() != tail.len() || tail.is_empty() {
        return Where::Other;
    }
    let up: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    match up.as_slice() {
        ["IS", "NULL"] | ["ISNULL"] => Where::Null {
            column,
            not_null: false,
        },
        ["IS", "NOT", "NULL"] | ["NOT", "NULL"] | ["NOTNULL"] => Where::Null {
            column,
            not_null: true,
        },
        _ => Where::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(n: &str) -> Key {
        Key::Column(n.into())
    }

    #[test]
    fn keys_and_conditions_are_read() {
        let p = parse("CREATE INDEX i ON t(a, \"b c\" DESC, [d] COLLATE NOCASE ASC)").unwrap();
        assert_eq!(p.keys, [col("a"), col("b c"), col("d")]);
        assert_eq!(p.condition, None);

        let p = parse(
            "create unique index if not exists \"on\" on \"t\" ( lower( \"e\"\"q\" ) collate rtrim desc, UPPER(`x`), a + 1, length(a) ) \
             where \"e\"\"q\" is not null",
        )
        .unwrap();
        assert_eq!(
            p.keys,
            [
                Key::Fold(Fold::Lower, "e\"q".into()),
                Key::Fold(Fold::Upper, "x".into()),
                Key::Other,
                Key::Other
            ]
        );
        assert_eq!(
            p.condition,
            Some(Where::Null {
                column: "e\"q".into(),
                not_null: true
            })
        );
        for (cond, want) in [
            ("a IS NULL", Some(false)),
            ("a ISNULL", Some(false)),
            ("a NOTNULL", Some(true)),
            ("a not null", Some(true)),
            ("a IS NOT NULL -- live rows\n", Some(true)),
            ("a /* x */ IS NULL", Some(false)),
            ("a IS NOT NULL AND b IS NULL", None),
            ("(a IS NULL)", None),
            ("a > 0", None),
            ("a IS 'x'", None),
            ("NOT a IS NULL", None),
        ] {
            let p = parse(&format!("CREATE INDEX i ON t(a) WHERE {cond}")).unwrap();
            let got = match p.condition {
                Some(Where::Null { column, not_null }) => {
                    assert_eq!(column, "a");
                    Some(not_null)
                }
                Some(Where::Other) => None,
                None => panic!("{cond}: no condition"),
            };
            assert_eq!(got, want, "{cond}");
        }
    }

    #[test]
    fn what_is_not_an_index_statement_is_refused() {
        for sql in [
            "",
            "CREATE TABLE t(a)",
            "CREATE INDEX i ON t a",
            "CREATE INDEX i ON t(a",
            "CREATE INDEX i ON t(a) ORDER BY a",
            "CREATE INDEX i ON t(\"a)",
            "CREATE INDEX i ON t(a) /* open",
        ] {
            assert_eq!(parse(sql), None, "{sql}");
        }
        // Commas and parentheses inside a key term are not splits.
        let p = parse("CREATE INDEX i ON t(substr(a, 1, 2), 'x,y', b)").unwrap();
        assert_eq!(p.keys, [Key::Other, Key::Other, col("b")]);
    }
}
