//! The text format of `COPY`: one row a line, columns separated by tabs,
//! `\N` for NULL, backslash escapes for the bytes that would break the
//! framing.

/// Decodes one field of a `COPY ... TO STDOUT` text row: `None` for NULL
/// (`\N`), else the value's text with escapes resolved (`\b \f \n \r \t
/// \v \\`, `\` + 1–3 octal digits, `\x` + 1–2 hex digits; any other escaped
/// character stands for itself).
pub fn decode_copy_field(f: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    Ok(decode_copy_field_into(f, &mut out)?.then_some(out))
}

/// [`decode_copy_field`] into `out` (cleared first, its memory reused):
/// `false` for NULL.
pub fn decode_copy_field_into(f: &[u8], out: &mut Vec<u8>) -> Result<bool, &'static str> {
    out.clear();
    if f == b"\\N" {
        return Ok(false);
    }
    if !f.contains(&b'\\') {
        out.extend_from_slice(f);
        return Ok(true);
    }
    out.reserve(f.len());
    let mut i = 0;
    while i < f.len() {
        let b = f[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = f.get(i + 1) else {
            return Err("COPY returned a field ending in a lone backslash");
        };
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut n = 1;
                while n < 3 && matches!(f.get(i), Some(b'0'..=b'7')) {
                    v = v * 8 + u32::from(f[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if f.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && f.get(i).is_some_and(u8::is_ascii_hexdigit) {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap();
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(true)
}

/// Appends one field in `COPY ... FROM STDIN` text form: `\N` for NULL,
/// else the text with backslash, newline, carriage return and tab escaped.
pub fn encode_copy_field(v: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(v) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        for v in [
            &b""[..],
            b"plain",
            b"tab\there",
            b"line\nbreak\r",
            b"back\\slash \\N",
            b"\\x00ff",
            b"{\"a\": \"b\\n\"}",
        ] {
            let mut enc = Vec::new();
            encode_copy_field(Some(v), &mut enc);
            assert!(!enc.contains(&b'\n') && !enc.contains(&b'\t'));
            assert_eq!(decode_copy_field(&enc).unwrap().as_deref(), Some(v));
        }
        let mut enc = Vec::new();
        encode_copy_field(None, &mut enc);
        assert_eq!(decode_copy_field(&enc).unwrap(), None);
    }

    #[test]
    fn escapes_of_other_writers_decode() {
        assert_eq!(
            decode_copy_field(b"a\\101\\x42\\q").unwrap().unwrap(),
            b"aABq"
        );
        assert_eq!(
            decode_copy_field(b"\\b\\f\\v").unwrap().unwrap(),
            [8, 12, 11]
        );
        assert!(decode_copy_field(b"x\\").is_err());
    }
}
