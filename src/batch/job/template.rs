//! A job's prompt template: text with `{{field}}` placeholders filled from one input record.
//!
//! The text is split into literal and field parts once, when the job loads, so that rendering
//! an item is a single pass of appends, and so that the fields a template needs are known before
//! any record is read (`Job::check_record` refuses a record before a provider is called).

use std::fmt;

use serde_json::{Map, Value};

use super::JobError;

/// A parsed `{{field}}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// Bytes of literal text, to size the rendered string in one allocation.
    literal_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A record lacks a field that the template uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field \"{field}\" is missing")]
pub struct MissingField {
    pub field: String,
}

impl Template {
    /// Splits `text` into literal and `{{field}}` parts. Whitespace inside the braces is not part
    /// of the name (`{{ subject }}` is `subject`); an unclosed `{{`, an empty name or a brace
    /// inside a name is an error that says where it is.
    pub fn parse(text: &str) -> Result<Self, JobError> {
        let mut parts = Vec::new();
        let mut literal_len = 0;
        let mut rest = text;
        let mut offset = 0;
        while let Some((literal, after)) = rest.split_once("{{") {
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_string()));
                literal_len += literal.len();
            }
            let at = offset + literal.len();
            let Some((inner, after_close)) = after.split_once("}}") else {
                return Err(template_error(text, at, "\"{{\" is never closed by \"}}\""));
            };
            let name = inner.trim();
            if name.is_empty() {
                return Err(template_error(text, at, "a placeholder needs a field name"));
            }
            if name.contains(['{', '}']) {
                return Err(template_error(
                    text,
                    at,
                    &format!("the field name {name:?} may not contain braces"),
                ));
            }
            parts.push(Part::Field(name.to_string()));
            offset = at + 2 + inner.len() + 2;
            rest = after_close;
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
            literal_len += rest.len();
        }
        Ok(Self { parts, literal_len })
    }

    /// The fields the template uses, each once, in order of first use.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().enumerate().filter_map(|(i, p)| match p {
            Part::Field(name) if !self.parts.iter().take(i).any(|q| q == p) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Fills the placeholders from `record`. Strings go in as they are (no quotes), numbers and
    /// booleans as their JSON text, null as nothing, arrays and objects as compact JSON.
    pub fn render(&self, record: &Map<String, Value>) -> Result<String, MissingField> {
        let mut out = String::with_capacity(self.literal_len + 64 * self.parts.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => match record.get(name) {
                    None => {
                        return Err(MissingField {
                            field: name.clone(),
                        });
                    }
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Null) => {}
                    Some(other) => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }

    /// The first field that `record` lacks, if any.
    pub fn missing_field(&self, record: &Map<String, Value>) -> Option<&str> {
        self.fields().find(|f| !record.contains_key(*f))
    }
}

impl fmt::Display for Template {
    /// The template text in its normal form (`{{field}}` without inner spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Field(name) => write!(f, "{{{{{name}}}}}")?,
            }
        }
        Ok(())
    }
}

/// A parse error placed by line and column, since prompts are usually several lines long.
fn template_error(text: &str, at: usize, reason: &str) -> JobError {
    let (line, column) = super::line_column(text, at);
    JobError::Template(format!("{reason} (line {line}, column {column})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn parses_literals_and_fields_with_or_without_inner_whitespace() {
        let t = Template::parse("Ticket from {{customer}}:\n{{ subject }}\n{{\tbody\n}}!").unwrap();
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["customer", "subject", "body"]
        );
        assert_eq!(
            t.to_string(),
            "Ticket from {{customer}}:\n{{subject}}\n{{body}}!"
        );
        let r = record(json!({"customer": "Acme", "subject": "Refund", "body": "Please."}));
        assert_eq!(t.render(&r).unwrap(), "Ticket from Acme:\nRefund\nPlease.!");
    }

    #[test]
    fn fields_are_listed_once() {
        let t = Template::parse("{{a}} {{b}} {{ a }}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn text_without_placeholders_and_lone_braces_are_literal() {
        let t = Template::parse("a {b} c }} d { e").unwrap();
        assert_eq!(t.fields().count(), 0);
        assert_eq!(t.render(&Map::new()).unwrap(), "a {b} c }} d { e");
        assert_eq!(
            Template::parse("").unwrap().render(&Map::new()).unwrap(),
            ""
        );
    }

    #[test]
    fn values_render_as_text_or_compact_json() {
        let t = Template::parse("{{s}}|{{i}}|{{f}}|{{b}}|{{n}}|{{a}}|{{o}}").unwrap();
        let r = record(json!({
            "s": "say \"hi\"", "i": 42, "f": 4.5, "b": true, "n": null,
            "a": [1, "x"], "o": {"k": [true]}
        }));
        assert_eq!(
            t.render(&r).unwrap(),
            r#"say "hi"|42|4.5|true||[1,"x"]|{"k":[true]}"#
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let t = Template::parse("{{subject}}: {{body}}").unwrap();
        let r = record(json!({"subject": "x"}));
        let err = t.render(&r).unwrap_err();
        assert_eq!(err.field, "body");
        assert_eq!(err.to_string(), "field \"body\" is missing");
        assert_eq!(t.missing_field(&r), Some("body"));
    }

    #[test]
    fn malformed_placeholders_are_errors_with_their_position() {
        let err = Template::parse("Hello\nfrom {{customer\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "\"{{\" is never closed by \"}}\" (line 2, column 6)");
        let err = Template::parse("x {{  }} y").unwrap_err().to_string();
        assert!(
            err.starts_with("a placeholder needs a field name (line 1, column 3)"),
            "{err}"
        );
        let err = Template::parse("{{{x}}}").unwrap_err().to_string();
        assert!(err.contains("may not contain braces"), "{err}");
        let err = Template::parse("{{a {{b}}").unwrap_err().to_string();
        assert!(err.contains("may not contain braces"), "{err}");
    }
}
