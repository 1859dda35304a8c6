//! A small RFC 4180 CSV record reader over bytes that tracks 1-based line numbers.
//!
//! Fields are separated by commas and records by `\n` or `\r\n`. A field that starts with `"` is
//! quoted: it may contain commas, newlines and doubled quotes (`""` → `"`), and must be followed
//! by a comma or the end of the line. A quote inside an unquoted field is kept literally
//! (`5" screen`), as most CSV readers do. Blank lines between records are skipped. Fields are
//! returned as bytes; the caller checks UTF-8 per record.

use crate::error::Problem;

#[derive(Debug)]
pub(crate) struct RawRecord {
    /// The 1-based line on which the record starts.
    pub line: usize,
    pub fields: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct CsvRecords<'a> {
    data: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> CsvRecords<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            line: 1,
        }
    }

    /// Consumes a line ending at the current position: `Some(true)` for `\n`/`\r\n`,
    /// `Some(false)` at the end of the data, `None` when something else is there.
    fn end_of_line(&mut self) -> Option<bool> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            Some(false)
        } else if rest[0] == b'\n' {
            self.pos += 1;
            self.line += 1;
            Some(true)
        } else if rest.starts_with(b"\r\n") {
            self.pos += 2;
            self.line += 1;
            Some(true)
        } else {
            None
        }
    }

    /// Skips to just after the next newline (recovery after a malformed record).
    fn skip_line(&mut self) {
        match self.data[self.pos..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                self.line += 1;
            }
            None => self.pos = self.data.len(),
        }
    }

    /// Reads a quoted field; the opening quote is at `self.pos`.
    fn quoted_field(&mut self, start_line: usize) -> Result<Vec<u8>, (usize, Problem)> {
        let data = self.data;
        let mut field = Vec::new();
        self.pos += 1;
        loop {
            let Some(&b) = data.get(self.pos) else {
                return Err((start_line, Problem::UnterminatedQuote));
            };
            if b == b'"' {
                if data.get(self.pos + 1) == Some(&b'"') {
                    field.push(b'"');
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return Ok(field);
            }
            if b == b'\n' {
                self.line += 1;
            }
            field.push(b);
            self.pos += 1;
        }
    }
}

impl Iterator for CsvRecords<'_> {
    type Item = Result<RawRecord, (usize, Problem)>;

    fn next(&mut self) -> Option<Self::Item> {
        // Blank lines between records.
        while self.pos < self.data.len() {
            if self.end_of_line().is_none() {
                break;
            }
        }
        if self.pos >= self.data.len() {
            return None;
        }
        let start_line = self.line;
        let mut fields = Vec::new();
        loop {
            if self.data.get(self.pos) == Some(&b'"') {
                match self.quoted_field(start_line) {
                    Ok(field) => fields.push(field),
                    Err(e) => {
                        self.pos = self.data.len();
                        return Some(Err(e));
                    }
                }
                if self.data.get(self.pos) == Some(&b',') {
                    self.pos += 1;
                    continue;
                }
                match self.end_of_line() {
                    Some(_) => {
                        return Some(Ok(RawRecord {
                            line: start_line,
                            fields,
                        }))
                    }
                    None => {
                        self.skip_line();
                        return Some(Err((start_line, Problem::TextAfterQuote)));
                    }
                }
            }
            let rest = &self.data[self.pos..];
            let len = rest
                .iter()
                .position(|&b| b == b',' || b == b'\n')
                .unwrap_or(rest.len());
            let mut field = &rest[..len];
            self.pos += len;
            if self.data.get(self.pos) == Some(&b',') {
                self.pos += 1;
                fields.push(field.to_vec());
                continue;
            }
            // End of line or of the data: a `\r` before it belongs to the line ending.
            if let Some(stripped) = field.strip_suffix(b"\r") {
                field = stripped;
            }
            fields.push(field.to_vec());
            if self.pos < self.data.len() {
                self.pos += 1;
                self.line += 1;
            }
            return Some(Ok(RawRecord {
                line: start_line,
                fields,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Parsed = Result<(usize, Vec<String>), (usize, Problem)>;

    fn records(data: &str) -> Vec<Parsed> {
        CsvRecords::new(data.as_bytes())
            .map(|r| {
                r.map(|r| {
                    (
                        r.line,
                        r.fields
                            .into_iter()
                            .map(|f| String::from_utf8(f).unwrap())
                            .collect(),
                    )
                })
            })
            .collect()
    }

    fn ok(line: usize, fields: &[&str]) -> Parsed {
        Ok((line, fields.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn plain_quoted_and_multiline_fields() {
        let data = "a,b,c\n1,\"x, y\",\"say \"\"hi\"\"\"\n2,\"two\nlines\",\r\n\n3,,\"\"";
        assert_eq!(
            records(data),
            vec![
                ok(1, &["a", "b", "c"]),
                ok(2, &["1", "x, y", "say \"hi\""]),
                ok(3, &["2", "two\nlines", ""]),
                ok(6, &["3", "", ""]),
            ]
        );
    }

    #[test]
    fn crlf_endings_and_literal_quotes_in_unquoted_fields() {
        assert_eq!(
            records("a,b\r\n5\" screen,\"q\"\r\nx,y\r"),
            vec![
                ok(1, &["a", "b"]),
                ok(2, &["5\" screen", "q"]),
                ok(3, &["x", "y"])
            ]
        );
    }

    #[test]
    fn trailing_comma_gives_an_empty_last_field() {
        assert_eq!(records("a,\n,"), vec![ok(1, &["a", ""]), ok(2, &["", ""])]);
    }

    #[test]
    fn text_after_a_closing_quote_skips_to_the_next_line() {
        assert_eq!(
            records("\"a\"b,c\nd,e\n"),
            vec![Err((1, Problem::TextAfterQuote)), ok(2, &["d", "e"])]
        );
    }

    #[test]
    fn an_unterminated_quote_ends_the_data_and_names_the_record_start() {
        assert_eq!(
            records("a,b\nc,\"d\ne,f\n"),
            vec![ok(1, &["a", "b"]), Err((2, Problem::UnterminatedQuote))]
        );
    }
}
