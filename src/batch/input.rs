//! The input file of a batch, read one record at a time so that memory stays flat however large
//! the file is. JSONL (one object per line) and CSV (a header row, then one record per row) are
//! told apart by the file extension.
//!
//! Every record carries its line number: the runner keys checkpoints on it, so it must be the
//! same on every run over the same bytes. A malformed line is not an error of the whole input:
//! it comes out as a record whose `fields` say why, so the batch can report it in the output and
//! go on. Only an unreadable file (I/O, a missing CSV header) stops the iteration.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Large enough that one read serves many typical lines; the buffer is reused across lines.
const READ_BUFFER: usize = 64 * 1024;
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// `.jsonl`, `.ndjson` and `.json` are JSONL; `.csv` is CSV (case does not matter).
    pub fn of(path: &Path) -> Result<Format, InputError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson" | "json") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            _ => Err(InputError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// One input item.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line where the item starts in the file. For CSV the header is line 1, so data
    /// starts at 2; a quoted field that spans lines makes the next record start further down.
    pub line: u64,
    /// The item's `id` field (a JSON number as its text), else the line number as text.
    pub id: String,
    /// The item's fields, or why the line could not be read as an item.
    pub fields: Result<Map<String, Value>, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "input {}: unknown format; name it .jsonl, .ndjson, .json or .csv",
        .path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("input {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("input {}: read failed: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("input {}: {source}", .path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error("input {}: a CSV input needs a header row", .path.display())]
    NoHeader { path: PathBuf },
    #[error("input {}: header: {reason}", .path.display())]
    BadHeader { path: PathBuf, reason: String },
}

pub struct Input {
    path: PathBuf,
    format: Format,
    reader: Reader,
    /// Set after an I/O error or the end, so that iteration stays ended.
    finished: bool,
}

enum Reader {
    Jsonl {
        file: BufReader<File>,
        /// The current line's bytes, reused so reading allocates only for the longest line.
        buf: Vec<u8>,
        line: u64,
    },
    Csv {
        // No BufReader: the csv reader buffers internally, and its docs advise against a second
        // buffer on top.
        reader: csv::Reader<File>,
        headers: Vec<String>,
        id_column: Option<usize>,
        row: csv::ByteRecord,
    },
}

impl Input {
    pub fn open(path: impl AsRef<Path>) -> Result<Input, InputError> {
        let path = path.as_ref().to_path_buf();
        let format = Format::of(&path)?;
        let file = File::open(&path).map_err(|source| InputError::Open {
            path: path.clone(),
            source,
        })?;
        let reader = match format {
            Format::Jsonl => Reader::Jsonl {
                file: BufReader::with_capacity(READ_BUFFER, file),
                buf: Vec::new(),
                line: 0,
            },
            Format::Csv => open_csv(&path, file)?,
        };
        Ok(Input {
            path,
            format,
            reader,
            finished: false,
        })
    }

    /// SHA-256 of the file's bytes as lowercase hex, read in a stream: tells whether the input
    /// under a batch changed between runs.
    pub fn hash(path: impl AsRef<Path>) -> Result<String, InputError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|source| InputError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(|source| InputError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(format!("{:x}", hasher.finalize()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The next record, `None` at the end. An error means the file itself could not be read
    /// further; malformed lines are records with `fields: Err(..)`.
    pub fn next_record(&mut self) -> Result<Option<Record>, InputError> {
        if self.finished {
            return Ok(None);
        }
        let next = match &mut self.reader {
            Reader::Jsonl { file, buf, line } => next_jsonl(&self.path, file, buf, line),
            Reader::Csv {
                reader,
                headers,
                id_column,
                row,
            } => next_csv(&self.path, reader, headers, *id_column, row),
        };
        if !matches!(next, Ok(Some(_))) {
            self.finished = true;
        }
        next
    }
}

/// Yields records until the end or the first read error (which ends the iteration).
impl Iterator for Input {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn next_jsonl(
    path: &Path,
    file: &mut BufReader<File>,
    buf: &mut Vec<u8>,
    line: &mut u64,
) -> Result<Option<Record>, InputError> {
    loop {
        buf.clear();
        let n = file
            .read_until(b'\n', buf)
            .map_err(|source| InputError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        *line += 1;
        let mut bytes: &[u8] = buf;
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if *line == 1 {
            bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        }
        // Blank lines are common at the end of hand-edited files; they are not items, but they
        // still count so line numbers match what an editor shows.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Ok(Some(jsonl_record(*line, bytes)));
    }
}

fn jsonl_record(line: u64, bytes: &[u8]) -> Record {
    let fallback_id = line.to_string();
    let object = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return Record {
                line,
                id: fallback_id,
                fields: Err(format!(
                    "line {line}: expected a JSON object: found {}",
                    kind_of(&other)
                )),
            };
        }
        Err(e) => {
            return Record {
                line,
                id: fallback_id,
                fields: Err(format!(
                    "line {line}: expected a JSON object: {}",
                    json_error(&e)
                )),
            };
        }
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => fallback_id,
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Record {
                line,
                id: fallback_id,
                fields: Err(format!(
                    "line {line}: \"id\" must be a string or a number, found {}",
                    kind_of(other)
                )),
            };
        }
    };
    Record {
        line,
        id,
        fields: Ok(object),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its "at line 1 column N": every line is parsed on its own, so
/// its line would always be 1; the column is what helps.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => format!("{message} at column {}", e.column()),
        None => text,
    }
}

fn open_csv(path: &Path, file: File) -> Result<Reader, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        // A row with the wrong field count is reported on that record, not as a read error that
        // would end the iteration.
        .flexible(true)
        .from_reader(file);
    let raw = reader
        .byte_headers()
        .map_err(|source| InputError::Csv {
            path: path.to_path_buf(),
            source,
        })?
        .clone();
    if raw.is_empty() {
        return Err(InputError::NoHeader {
            path: path.to_path_buf(),
        });
    }
    let mut headers = Vec::with_capacity(raw.len());
    for (i, field) in raw.iter().enumerate() {
        let field = if i == 0 {
            field.strip_prefix(BOM).unwrap_or(field)
        } else {
            field
        };
        let name = std::str::from_utf8(field).map_err(|_| InputError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("column {} is not valid UTF-8", i + 1),
        })?;
        if headers.iter().any(|h| h == name) {
            // Two columns of one name would silently lose one of them in the record's fields.
            return Err(InputError::BadHeader {
                path: path.to_path_buf(),
                reason: format!("column {name:?} appears twice"),
            });
        }
        headers.push(name.to_string());
    }
    let id_column = headers.iter().position(|h| h == "id");
    Ok(Reader::Csv {
        reader,
        headers,
        id_column,
        row: csv::ByteRecord::new(),
    })
}

fn next_csv(
    path: &Path,
    reader: &mut csv::Reader<File>,
    headers: &[String],
    id_column: Option<usize>,
    row: &mut csv::ByteRecord,
) -> Result<Option<Record>, InputError> {
    let more = reader
        .read_byte_record(row)
        .map_err(|source| InputError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
    if !more {
        return Ok(None);
    }
    let line = row.position().map_or(0, csv::Position::line);
    // An empty id cell is how CSV spells "no id", so it falls back like a missing column.
    let id = id_column
        .and_then(|i| row.get(i))
        .and_then(|cell| std::str::from_utf8(cell).ok())
        .filter(|cell| !cell.is_empty())
        .map_or_else(|| line.to_string(), str::to_string);
    let fields = if row.len() == headers.len() {
        csv_fields(line, headers, row)
    } else {
        Err(format!(
            "line {line}: expected {} fields as in the header, found {}",
            headers.len(),
            row.len()
        ))
    };
    Ok(Some(Record { line, id, fields }))
}

fn csv_fields(
    line: u64,
    headers: &[String],
    row: &csv::ByteRecord,
) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    for (name, cell) in headers.iter().zip(row.iter()) {
        let text = std::str::from_utf8(cell)
            .map_err(|_| format!("line {line}: column {name:?} is not valid UTF-8"))?;
        fields.insert(name.clone(), Value::String(text.to_string()));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn read_all(path: &Path) -> Vec<Record> {
        Input::open(path)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    #[test]
    fn format_follows_the_extension() {
        for (name, format) in [
            ("a.jsonl", Format::Jsonl),
            ("a.ndjson", Format::Jsonl),
            ("a.JSON", Format::Jsonl),
            ("a.csv", Format::Csv),
        ] {
            assert_eq!(Format::of(Path::new(name)).unwrap(), format, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "items.txt", "{}\n");
        let err = Input::open(&path).err().unwrap();
        assert!(matches!(err, InputError::UnknownFormat { .. }));
        assert!(err.to_string().contains("items.txt"), "{err}");
        assert!(Format::of(Path::new("noext")).is_err());
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = Input::open("/nonexistent/dir/x.jsonl").err().unwrap();
        assert!(matches!(err, InputError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/x.jsonl"));
    }

    #[test]
    fn jsonl_ids_from_the_field_or_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "in.jsonl",
            "{\"id\": \"a-1\", \"text\": \"hi\"}\n{\"text\": \"no id\"}\r\n{\"id\": 42}\n{\"id\": 1.5}\n{\"id\": null, \"x\": 1}",
        );
        let records = read_all(&path);
        let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a-1", "2", "42", "1.5", "5"]);
        let lines: Vec<_> = records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5]);
        let first = records[0].fields.as_ref().unwrap();
        assert_eq!(first["text"], json!("hi"));
        assert_eq!(first["id"], json!("a-1"));
        assert_eq!(records[1].fields.as_ref().unwrap()["text"], json!("no id"));
    }

    #[test]
    fn jsonl_blank_lines_are_skipped_but_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "in.jsonl", "\n{\"a\": 1}\n   \n\t\n{\"a\": 2}\n\n");
        let records = read_all(&path);
        let got: Vec<_> = records.iter().map(|r| (r.line, r.id.as_str())).collect();
        assert_eq!(got, [(2, "2"), (5, "5")]);
    }

    #[test]
    fn jsonl_a_malformed_line_is_reported_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "in.jsonl",
            "{\"id\": \"a\"}\n{\"id\": \"b\"\n[1, 2]\n\"text\"\n{\"id\": true}\n{\"id\": \"c\"}\n",
        );
        let records = read_all(&path);
        assert_eq!(records.len(), 6);
        assert!(records[0].fields.is_ok());
        let broken = records[1].fields.as_ref().unwrap_err();
        assert!(
            broken.starts_with("line 2: expected a JSON object: "),
            "{broken}"
        );
        assert!(!broken.contains("line 1"), "{broken}");
        assert_eq!(records[1].id, "2");
        assert_eq!(
            records[2].fields.as_ref().unwrap_err(),
            "line 3: expected a JSON object: found an array"
        );
        assert_eq!(
            records[3].fields.as_ref().unwrap_err(),
            "line 4: expected a JSON object: found a string"
        );
        assert!(
            records[4]
                .fields
                .as_ref()
                .unwrap_err()
                .contains("\"id\" must be a string or a number")
        );
        assert_eq!(records[5].id, "c");
        assert!(records[5].fields.is_ok());
    }

    #[test]
    fn jsonl_a_leading_bom_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "in.jsonl", "\u{feff}{\"id\": \"x\"}\n");
        let records = read_all(&path);
        assert_eq!(records[0].id, "x");
    }

    #[test]
    fn csv_with_header_and_id_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "in.csv", "id,text\nr1,hello\nr2,world\n");
        let records = read_all(&path);
        let got: Vec<_> = records.iter().map(|r| (r.line, r.id.as_str())).collect();
        assert_eq!(got, [(2, "r1"), (3, "r2")]);
        assert_eq!(
            records[0].fields.as_ref().unwrap(),
            json!({"id": "r1", "text": "hello"}).as_object().unwrap()
        );
    }

    #[test]
    fn csv_without_id_column_uses_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "in.csv", "\u{feff}text,n\nhello,1\nworld,2\n");
        let records = read_all(&path);
        let got: Vec<_> = records.iter().map(|r| (r.line, r.id.as_str())).collect();
        assert_eq!(got, [(2, "2"), (3, "3")]);
        // The BOM is not part of the first column's name.
        assert_eq!(records[0].fields.as_ref().unwrap()["text"], json!("hello"));
        assert_eq!(records[1].fields.as_ref().unwrap()["n"], json!("2"));
    }

    #[test]
    fn csv_a_row_with_the_wrong_field_count_is_reported_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "in.csv", "id,a,b\nr1,1,2\nr2,1\nr3,1,2,3\nr4,1,2\n");
        let records = read_all(&path);
        assert_eq!(records.len(), 4);
        assert!(records[0].fields.is_ok());
        assert_eq!(
            records[1].fields.as_ref().unwrap_err(),
            "line 3: expected 3 fields as in the header, found 2"
        );
        assert_eq!(records[1].id, "r2");
        assert!(records[2].fields.is_err());
        assert_eq!((records[3].line, records[3].id.as_str()), (5, "r4"));
        assert!(records[3].fields.is_ok());
    }

    #[test]
    fn csv_quoted_commas_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "in.csv",
            "text,note\n\"a, b\",plain\n\"two\nlines\",\"say \"\"hi\"\"\"\nlast,row\n",
        );
        let records = read_all(&path);
        let got: Vec<_> = records.iter().map(|r| (r.line, r.id.as_str())).collect();
        // The second record spans lines 3 and 4, so the third starts on line 5.
        assert_eq!(got, [(2, "2"), (3, "3"), (5, "5")]);
        let second = records[1].fields.as_ref().unwrap();
        assert_eq!(second["text"], json!("two\nlines"));
        assert_eq!(second["note"], json!("say \"hi\""));
        assert_eq!(records[0].fields.as_ref().unwrap()["text"], json!("a, b"));
    }

    #[test]
    fn csv_needs_a_header_and_unique_columns() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(&dir, "empty.csv", "");
        assert!(matches!(
            Input::open(&empty).err().unwrap(),
            InputError::NoHeader { .. }
        ));
        let twice = write(&dir, "twice.csv", "a,a\n1,2\n");
        let err = Input::open(&twice).err().unwrap();
        assert!(err.to_string().contains("\"a\" appears twice"), "{err}");
        let only_header = write(&dir, "header.csv", "id,text\n");
        assert!(read_all(&only_header).is_empty());
    }

    #[test]
    fn hash_is_stable_and_follows_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a.jsonl", "{\"id\": 1}\n");
        let same = write(&dir, "same.csv", "{\"id\": 1}\n");
        let b = write(&dir, "b.jsonl", "{\"id\": 2}\n");
        let h = Input::hash(&a).unwrap();
        assert_eq!(h.len(), 64);
        assert_eq!(h, Input::hash(&a).unwrap());
        assert_eq!(h, Input::hash(&same).unwrap());
        assert_ne!(h, Input::hash(&b).unwrap());
        // Known vector: SHA-256 of the empty string.
        let empty = write(&dir, "empty.jsonl", "");
        assert_eq!(
            Input::hash(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Input::hash(dir.path().join("missing.jsonl")).is_err());
    }
}
