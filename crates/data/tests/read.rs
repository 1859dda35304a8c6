//! Known answers for each format and every malformed case in Error and Skip mode.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use distillery_data::{
    parse_dataset, ColumnSpec, DataError, Example, Format, MalformedPolicy, Problem, ReadConfig,
};

fn ex(text: &str, pair: Option<&str>, label: Option<&str>, line: usize) -> Example {
    Example {
        text: text.into(),
        pair: pair.map(Into::into),
        label: label.map(Into::into),
        line,
    }
}

fn labelled() -> ReadConfig {
    ReadConfig::new(ColumnSpec::labelled("sentence", "label"))
}

#[test]
fn tsv_known_answer_with_pairs_labels_and_extra_columns() {
    let data = "id\tsentence1\tsentence2\tlabel\r\n\
                1\tThe cat sat.\tA cat was sitting.\tentailment\r\n\
                \r\n\
                2\tIt rains\tIt is \"dry\", sunny\t contradiction \n";
    let config = ReadConfig::new(ColumnSpec::labelled("sentence1", "label").with_pair("sentence2"));
    let (path, ds, _dir) = common::read("pairs.tsv", data.as_bytes(), &config);
    let ds = ds.unwrap();
    assert_eq!(ds.source, path);
    assert_eq!(
        ds.examples,
        vec![
            ex(
                "The cat sat.",
                Some("A cat was sitting."),
                Some("entailment"),
                2
            ),
            ex(
                "It rains",
                Some("It is \"dry\", sunny"),
                Some("contradiction"),
                4
            ),
        ]
    );
    assert!(ds.skipped.is_empty());
    assert_eq!(ds.skip_summary(), None);
}

#[test]
fn csv_known_answer_with_quoted_commas_doubled_quotes_and_newlines() {
    let data = "\u{feff}label,sentence,source\n\
                pos,\"Good, very good.\",web\n\
                neg,\"He said \"\"meh\"\"\",\"x\"\r\n\
                pos,\"two\nlines, here\",y\n\
                neg,plain text,z";
    let (_, ds, _dir) = common::read("reviews.csv", data.as_bytes(), &labelled());
    assert_eq!(
        ds.unwrap().examples,
        vec![
            ex("Good, very good.", None, Some("pos"), 2),
            ex("He said \"meh\"", None, Some("neg"), 3),
            ex("two\nlines, here", None, Some("pos"), 4),
            ex("plain text", None, Some("neg"), 6),
        ]
    );
}

#[test]
fn jsonl_known_answer_with_pairs_and_non_string_labels() {
    let data = r#"{"q": "Is it?", "p": "It is.", "y": "yes", "extra": [1, 2]}

{"q": "Why \"so\"?", "p": "Because,\nreasons", "y": 1}
{"y": true, "p": "b", "q": "a"}
"#;
    let config = ReadConfig::new(ColumnSpec::labelled("q", "y").with_pair("p"));
    let (_, ds, _dir) = common::read("qa.jsonl", data.as_bytes(), &config);
    assert_eq!(
        ds.unwrap().examples,
        vec![
            ex("Is it?", Some("It is."), Some("yes"), 1),
            ex("Why \"so\"?", Some("Because,\nreasons"), Some("1"), 3),
            ex("a", Some("b"), Some("true"), 4),
        ]
    );
}

#[test]
fn unlabelled_text_reads_only_the_text_column() {
    let config = ReadConfig::new(ColumnSpec::text("text"));
    let (_, ds, _dir) = common::read("corpus.tsv", b"text\tlabel\nfirst\t\nsecond\tx\n", &config);
    assert_eq!(
        ds.unwrap().examples,
        vec![ex("first", None, None, 2), ex("second", None, None, 3)]
    );
    // JSONL without any label key.
    let (_, ds, _dir) = common::read("corpus.jsonl", b"{\"text\": \"only\"}\n", &config);
    assert_eq!(ds.unwrap().examples, vec![ex("only", None, None, 1)]);
}

#[test]
fn format_is_inferred_from_the_extension_or_given() {
    assert_eq!(
        Format::from_extension(Path::new("a/b.TSV")),
        Some(Format::Tsv)
    );
    assert_eq!(
        Format::from_extension(Path::new("b.ndjson")),
        Some(Format::Jsonl)
    );
    assert_eq!(Format::from_extension(Path::new("b.txt")), None);
    let config = ReadConfig::new(ColumnSpec::text("t"));
    let err = parse_dataset(b"t\nx\n", Path::new("data.txt"), &config).unwrap_err();
    assert!(matches!(err, DataError::UnknownFormat { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("data.txt: cannot tell the format"),
        "{err}"
    );
    let ds = parse_dataset(
        b"t\nx\n",
        Path::new("data.txt"),
        &config.with_format(Format::Tsv),
    );
    assert_eq!(ds.unwrap().examples, vec![ex("x", None, None, 2)]);
}

#[test]
fn header_problems_are_errors_even_when_skipping() {
    let config = labelled().with_malformed(MalformedPolicy::Skip);
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "a.tsv",
            b"text\tlabel\nx\ty\n",
            "a.tsv:1: header: no column `sentence` (columns: text, label)",
        ),
        (
            "b.csv",
            b"\n\nsentence,sentence,label\n",
            "b.csv:3: header: column `sentence` appears more than once",
        ),
        (
            "c.csv",
            b"",
            "c.csv:1: header: empty file (expected a header row)",
        ),
        (
            "d.tsv",
            b"sent\xffence\tlabel\n",
            "d.tsv:1: header: invalid UTF-8",
        ),
        (
            "e.csv",
            b"\"sentence,label\n",
            "e.csv:1: header: unterminated quoted field",
        ),
    ];
    for (name, data, want) in cases {
        let (path, ds, _dir) = common::read(name, data, &config);
        let err = ds.unwrap_err().to_string();
        let want = want.replacen(name, &path.display().to_string(), 1);
        assert!(err.starts_with(&want), "{name}: got {err:?}, want {want:?}");
    }
}

struct Case {
    name: &'static str,
    file: &'static str,
    columns: ColumnSpec,
    data: &'static [u8],
    /// The 1-based line of the bad row, its kind, and a phrase of its message.
    line: usize,
    kind: &'static str,
    message: &'static str,
    /// Texts kept when skipping.
    kept: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let lab = || ColumnSpec::labelled("sentence", "label");
    let pair = || ColumnSpec::labelled("sentence", "label").with_pair("other");
    vec![
        Case {
            name: "tsv: too few fields",
            file: "a.tsv",
            columns: lab(),
            data: b"sentence\tlabel\nok\tpos\nmissing label\n fine \tneg\n",
            line: 3,
            kind: "wrong column count",
            message: "expected 2 fields (as the header), found 1",
            kept: &["ok", " fine "],
        },
        Case {
            name: "tsv: too many fields (a tab inside the text)",
            file: "a.tsv",
            columns: lab(),
            data: b"sentence\tlabel\nok\tpos\r\ntab\there\tneg\r\n",
            line: 3,
            kind: "wrong column count",
            message: "found 3",
            kept: &["ok"],
        },
        Case {
            name: "tsv: empty text",
            file: "a.tsv",
            columns: lab(),
            data: b"sentence\tlabel\n  \tpos\nok\tneg\n",
            line: 2,
            kind: "empty text",
            message: "empty text in column `sentence`",
            kept: &["ok"],
        },
        Case {
            name: "tsv: empty second text of a pair",
            file: "a.tsv",
            columns: pair(),
            data: b"sentence\tother\tlabel\na\tb\tpos\nc\t\tneg\n",
            line: 3,
            kind: "empty text",
            message: "empty text in column `other`",
            kept: &["a"],
        },
        Case {
            name: "tsv: empty label",
            file: "a.tsv",
            columns: lab(),
            data: b"sentence\tlabel\nx\t \ny\tpos\n",
            line: 2,
            kind: "empty label",
            message: "empty label in column `label`",
            kept: &["y"],
        },
        Case {
            name: "tsv: invalid UTF-8",
            file: "a.tsv",
            columns: lab(),
            data: b"sentence\tlabel\nok\tpos\nbad \xc3\x28 byte\tneg\nlast\tpos\n",
            line: 3,
            kind: "invalid UTF-8",
            message: "invalid UTF-8",
            kept: &["ok", "last"],
        },
        Case {
            name: "csv: wrong column count",
            file: "a.csv",
            columns: lab(),
            data: b"sentence,label\n\"a, b\",pos\nc,d,neg\ne,neg\n",
            line: 3,
            kind: "wrong column count",
            message: "expected 2 fields (as the header), found 3",
            kept: &["a, b", "e"],
        },
        Case {
            name: "csv: invalid UTF-8 inside a multi-line record",
            file: "a.csv",
            columns: lab(),
            data: b"sentence,label\n\"one\ntwo \xff\nthree\",pos\nok,neg\n",
            line: 2,
            kind: "invalid UTF-8",
            message: "invalid UTF-8",
            kept: &["ok"],
        },
        Case {
            name: "csv: text after a closing quote",
            file: "a.csv",
            columns: lab(),
            data: b"sentence,label\nok,pos\n\"quoted\"tail,neg\nnext,pos\n",
            line: 3,
            kind: "text after closing quote",
            message: "text after a closing quote",
            kept: &["ok", "next"],
        },
        Case {
            name: "csv: unterminated quote",
            file: "a.csv",
            columns: lab(),
            data: b"sentence,label\nok,pos\n\n\"never closed,neg\nmore,pos\n",
            line: 4,
            kind: "unterminated quote",
            message: "unterminated quoted field",
            kept: &["ok"],
        },
        Case {
            name: "csv: empty text in quotes",
            file: "a.csv",
            columns: lab(),
            data: b"sentence,label\n\"\",pos\nok,neg\n",
            line: 2,
            kind: "empty text",
            message: "empty text in column `sentence`",
            kept: &["ok"],
        },
        Case {
            name: "jsonl: not an object",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"sentence\": \"a\", \"label\": \"x\"}\n[\"b\", \"y\"]\n",
            line: 2,
            kind: "not a JSON object",
            message: "not a JSON object",
            kept: &["a"],
        },
        Case {
            name: "jsonl: invalid JSON",
            file: "a.jsonl",
            columns: lab(),
            data: b"\n{\"sentence\": \"a\", \"label\": \"x\"\n{\"sentence\": \"b\", \"label\": \"y\"}\n",
            line: 2,
            kind: "invalid JSON",
            message: "invalid JSON: EOF while parsing an object",
            kept: &["b"],
        },
        Case {
            name: "jsonl: lacks the text key",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"text\": \"a\", \"label\": \"x\"}\n{\"sentence\": \"b\", \"label\": \"y\"}\n",
            line: 1,
            kind: "missing key",
            message: "missing key `sentence`",
            kept: &["b"],
        },
        Case {
            name: "jsonl: null label",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"sentence\": \"a\", \"label\": \"x\"}\r\n{\"sentence\": \"b\", \"label\": null}\r\n",
            line: 2,
            kind: "missing key",
            message: "missing key `label`",
            kept: &["a"],
        },
        Case {
            name: "jsonl: text of the wrong type",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"sentence\": 5, \"label\": \"x\"}\n{\"sentence\": \"b\", \"label\": \"y\"}\n",
            line: 1,
            kind: "wrong type",
            message: "key `sentence`: expected a string",
            kept: &["b"],
        },
        Case {
            name: "jsonl: a float label",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"sentence\": \"a\", \"label\": 0.5}\n",
            line: 1,
            kind: "wrong type",
            message: "key `label`: expected a string, an integer or a boolean",
            kept: &[],
        },
        Case {
            name: "jsonl: invalid UTF-8",
            file: "a.jsonl",
            columns: lab(),
            data: b"{\"sentence\": \"a\", \"label\": \"x\"}\n{\"sentence\": \"\xe2\x82\", \"label\": \"y\"}\n",
            line: 2,
            kind: "invalid UTF-8",
            message: "invalid UTF-8",
            kept: &["a"],
        },
    ]
}

#[test]
fn every_malformed_case_is_an_error_naming_file_and_line() {
    for case in cases() {
        let config = ReadConfig::new(case.columns.clone());
        let (path, ds, _dir) = common::read(case.file, case.data, &config);
        let err = match ds {
            Ok(ds) => panic!("{}: expected an error, read {:?}", case.name, ds.examples),
            Err(e) => e,
        };
        let msg = err.to_string();
        let prefix = format!("{}:{}: ", path.display(), case.line);
        assert!(
            msg.starts_with(&prefix),
            "{}: {msg:?} should start with {prefix:?}",
            case.name
        );
        assert!(
            msg.contains(case.message),
            "{}: {msg:?} should say {:?}",
            case.name,
            case.message
        );
        match err {
            DataError::Malformed { line, problem, .. } => {
                assert_eq!(line, case.line, "{}", case.name);
                assert_eq!(problem.kind(), case.kind, "{}", case.name);
            }
            other => panic!("{}: wrong variant {other:?}", case.name),
        }
    }
}

#[test]
fn every_malformed_case_is_skipped_and_counted_when_configured() {
    for case in cases() {
        let config = ReadConfig::new(case.columns.clone()).with_malformed(MalformedPolicy::Skip);
        let (path, ds, _dir) = common::read(case.file, case.data, &config);
        let ds = ds.unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, case.kept, "{}", case.name);
        assert_eq!(ds.skipped.len(), 1, "{}: {:?}", case.name, ds.skipped);
        assert_eq!(ds.skipped[0].line, case.line, "{}", case.name);
        assert_eq!(ds.skipped[0].problem.kind(), case.kind, "{}", case.name);
        assert_eq!(ds.skip_counts().get(case.kind), Some(&1), "{}", case.name);
        let summary = ds.skip_summary().unwrap();
        assert_eq!(
            summary,
            format!(
                "{}: skipped 1 row (1 {}; first at line {})",
                path.display(),
                case.kind,
                case.line
            )
        );
    }
}

#[test]
fn skip_report_counts_by_kind() {
    let data = b"sentence\tlabel\n\tpos\na\tb\tc\nok\tpos\n \tneg\nbad\xff\tpos\n";
    let config = labelled().with_malformed(MalformedPolicy::Skip);
    let (_, ds, _dir) = common::read("mix.tsv", data, &config);
    let ds = ds.unwrap();
    assert_eq!(ds.examples, vec![ex("ok", None, Some("pos"), 4)]);
    let lines: Vec<usize> = ds.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![2, 3, 5, 6]);
    let counts: Vec<(&str, usize)> = ds.skip_counts().into_iter().collect();
    assert_eq!(
        counts,
        vec![
            ("empty text", 2),
            ("invalid UTF-8", 1),
            ("wrong column count", 1)
        ]
    );
    assert!(ds.skip_summary().unwrap().ends_with(
        "skipped 4 rows (2 empty text, 1 invalid UTF-8, 1 wrong column count; first at line 2)"
    ));
    assert_eq!(
        ds.skipped[1].problem,
        Problem::WrongColumnCount {
            expected: 2,
            found: 3
        }
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let config = labelled();
    let err =
        distillery_data::read_dataset(Path::new("/nonexistent/train.tsv"), &config).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/train.tsv: cannot read"),
        "{err}"
    );
}
