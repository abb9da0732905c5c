//! The `json_schema` output rule (extraction): the answer must hold JSON that the job's schema
//! accepts.
//!
//! Providers differ in how they hand back structured output even when asked with
//! `response_format`: some wrap it in a ```json fence or a sentence, and some quote numbers
//! (DeepSeek answers `4.5` where Gemini answers `"4.5"`). So the JSON is first found in the text,
//! then strings are turned into numbers or booleans wherever the schema asks for those types and
//! does not also allow a string, and only then is the value validated. The schema is compiled
//! once, when the job loads.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::Problems;

/// A compiled extraction rule.
#[derive(Debug, Clone)]
pub struct JsonSchemaRule {
    schema: Value,
    /// The job name in the form OpenAI accepts for `response_format.json_schema.name`.
    name: String,
    validator: jsonschema::Validator,
}

/// Validation errors quoted in a failure reason; the first few say enough to fix a prompt.
const REASON_ERRORS: usize = 3;

/// How deep coercion follows schemas (and `$ref`s) before it stops: a guard against a schema that
/// refers to itself without descending into the value.
const MAX_DEPTH: usize = 64;

impl JsonSchemaRule {
    /// Compiles `output.json_schema`, reporting a schema that does not compile at that key.
    pub(super) fn new(schema: Value, job_name: &str, problems: &mut Problems) -> Option<Self> {
        if !schema.is_object() {
            problems.add(
                "output.json_schema",
                "must be a table (a JSON Schema object)",
            );
            return None;
        }
        // Formats (`date`, `email`) are part of what an extraction job asks for, so they are
        // checked rather than left as annotations.
        match jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
        {
            Ok(validator) => Some(Self {
                name: schema_name(job_name),
                schema,
                validator,
            }),
            Err(e) => {
                // The error's instance is the schema itself: its path says which part is wrong.
                let at = match e.instance_path().as_str() {
                    "" => String::new(),
                    path => format!(" at {path}"),
                };
                problems.add(
                    "output.json_schema",
                    format!("is not a valid JSON Schema{at}: {e}"),
                );
                None
            }
        }
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The name sent as `response_format.json_schema.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JSON value in `answer`, coerced and validated, or why there is none.
    pub fn check(&self, answer: &str) -> Result<Value, String> {
        let mut value = extract_json(answer)?;
        coerce(&self.schema, &mut value);
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(REASON_ERRORS)
            .map(|e| {
                let path = e.instance_path().as_str();
                let path = if path.is_empty() { "/" } else { path };
                format!("{path}: {e}")
            })
            .collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// OpenAI's rule for a schema name: `[a-zA-Z0-9_-]{1,64}`.
fn schema_name(job_name: &str) -> String {
    let name: String = job_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "output".to_string()
    } else {
        name
    }
}

/// The JSON in a model's answer: the whole text, else the first ```json (or bare ```) fenced
/// block, else the span from the first `{` to the last `}`.
pub fn extract_json(answer: &str) -> Result<Value, String> {
    let text = answer.trim();
    if text.is_empty() {
        return Err("the answer is empty".to_string());
    }
    let first_error = match serde_json::from_str::<Value>(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let candidates = [fenced_block(text), outer_braces(text)];
    let mut last_error = None;
    for candidate in candidates.into_iter().flatten() {
        match serde_json::from_str(candidate.trim()) {
            Ok(value) => return Ok(value),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => format!("the JSON in the answer does not parse: {e}"),
        None if text.contains('{') || text.contains('[') => {
            format!("the answer is not JSON: {first_error}")
        }
        None => "the answer holds no JSON object".to_string(),
    })
}

/// The body of the first fenced block whose info string is `json` (any case) or empty.
fn fenced_block(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some((_, after)) = rest.split_once("```") {
        let (info, body) = after.split_once('\n')?;
        let (inside, after_close) = body.split_once("```")?;
        let info = info.trim();
        if info.is_empty() || info.eq_ignore_ascii_case("json") {
            return Some(inside);
        }
        rest = after_close;
    }
    None
}

fn outer_braces(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    (start < end).then(|| &text[start..=end])
}

/// Turns strings into numbers and booleans wherever `schema` wants those and not a string:
/// through `properties`, `additionalProperties`, `items`, `prefixItems`, `allOf`, the first
/// matching `anyOf`/`oneOf` branch, and local `$ref`s.
pub fn coerce(schema: &Value, value: &mut Value) {
    coerce_at(schema, schema, value, 0);
}

fn coerce_at(root: &Value, schema: &Value, value: &mut Value, depth: usize) {
    let Value::Object(s) = schema else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(target) = s
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| local_ref(root, r))
    {
        coerce_at(root, target, value, depth + 1);
    }
    for branch in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        coerce_at(root, branch, value, depth + 1);
    }
    if let Value::String(text) = value
        && let Some(types) = declared_types(s)
        && let Some(new) = coerce_scalar(&types, text)
    {
        *value = new;
    }
    for key in ["anyOf", "oneOf"] {
        let branches = s.get(key).and_then(Value::as_array).into_iter().flatten();
        if let Some(branch) = branches.into_iter().find(|b| admits(b, value)) {
            coerce_at(root, branch, value, depth + 1);
        }
    }
    match value {
        Value::Object(map) => coerce_object(root, s, map, depth),
        Value::Array(items) => {
            let prefix = s
                .get("prefixItems")
                .or_else(|| s.get("items").filter(|i| i.is_array()))
                .and_then(Value::as_array);
            // After a tuple prefix the rest follow `items` (2020-12) or `additionalItems` (draft 7).
            let rest = if s.contains_key("prefixItems") {
                s.get("items")
            } else if prefix.is_some() {
                s.get("additionalItems")
            } else {
                s.get("items")
            };
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(item_schema) = prefix.and_then(|p| p.get(i)).or(rest) {
                    coerce_at(root, item_schema, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn coerce_object(root: &Value, s: &Map<String, Value>, map: &mut Map<String, Value>, depth: usize) {
    let properties = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties").filter(|a| a.is_object());
    for (key, v) in map.iter_mut() {
        if let Some(property) = properties.and_then(|p| p.get(key)).or(additional) {
            coerce_at(root, property, v, depth + 1);
        }
    }
}

/// A `$ref` into the same document (`#`, `#/$defs/x`, `#/definitions/x`).
fn local_ref<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

/// The types a schema admits by its `type`, else by the `type`s of all its `anyOf`/`oneOf`
/// branches (`anyOf: [{type: number}, {type: null}]`); `None` when it does not say.
fn declared_types(s: &Map<String, Value>) -> Option<Vec<&str>> {
    if let Some(t) = s.get("type") {
        return type_names(t);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            let mut all = Vec::new();
            for branch in branches {
                all.extend(type_names(branch.get("type")?)?);
            }
            return Some(all);
        }
    }
    None
}

fn type_names(t: &Value) -> Option<Vec<&str>> {
    match t {
        Value::String(name) => Some(vec![name.as_str()]),
        Value::Array(names) => names.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// Whether a branch's `type` allows the value as it is (a branch without `type` allows all).
fn admits(branch: &Value, value: &Value) -> bool {
    let Some(types) = branch.as_object().and_then(declared_types) else {
        return true;
    };
    types.iter().any(|t| match (*t, value) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        ("string", Value::String(_)) => true,
        ("array", Value::Array(_)) | ("object", Value::Object(_)) => true,
        _ => false,
    })
}

/// The number or boolean that `text` spells, if the schema wants one and no string.
fn coerce_scalar(types: &[&str], text: &str) -> Option<Value> {
    if types.contains(&"string") {
        return None;
    }
    let wants_number = types.contains(&"number");
    if (wants_number || types.contains(&"integer"))
        && let Some(n) = parse_number(text, !wants_number)
    {
        return Some(Value::Number(n));
    }
    if types.contains(&"boolean") {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => return Some(Value::Bool(true)),
            "false" => return Some(Value::Bool(false)),
            _ => {}
        }
    }
    None
}

/// A decimal number with optional thousands commas (`1,234.5`); with `integer_only`, only a
/// whole one (`12`, `12.0`). Not `NaN`, `inf`, hex or a decimal comma (`1,5` is ambiguous).
fn parse_number(text: &str, integer_only: bool) -> Option<Number> {
    let t = text.trim();
    let plain = if t.contains(',') {
        Cow::Owned(strip_thousands(t)?)
    } else {
        Cow::Borrowed(t)
    };
    let numeric = plain
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'));
    if !numeric || !plain.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    // Whole numbers are read as integers so that large ids keep every digit.
    let digits = plain.strip_prefix('+').unwrap_or(&plain);
    if let Ok(i) = digits.parse::<i64>() {
        return Some(Number::from(i));
    }
    if let Ok(u) = digits.parse::<u64>() {
        return Some(Number::from(u));
    }
    let x: f64 = plain.parse().ok().filter(|x: &f64| x.is_finite())?;
    if integer_only {
        // Whole and inside the range where f64 holds integers exactly.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        return (x.fract() == 0.0 && x.abs() <= EXACT).then(|| Number::from(x as i64));
    }
    Number::from_f64(x)
}

/// `1,234,567.89` → `1234567.89`, when every comma separates a group of three digits.
fn strip_thousands(t: &str) -> Option<String> {
    let (sign, body) = match t.strip_prefix(['-', '+']) {
        Some(rest) => (t.get(..1).unwrap_or_default(), rest),
        None => ("", t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let mut groups = int.split(',');
    let first = groups.next()?;
    let digits = |g: &str| g.chars().all(|c| c.is_ascii_digit());
    if first.is_empty() || first.len() > 3 || !digits(first) {
        return None;
    }
    let mut out = format!("{sign}{first}");
    for g in groups {
        if g.len() != 3 || !digits(g) {
            return None;
        }
        out.push_str(g);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(schema: Value) -> JsonSchemaRule {
        let mut p = Problems::default();
        let r = JsonSchemaRule::new(schema, "test job", &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        r.unwrap()
    }

    fn coerced(schema: Value, mut value: Value) -> Value {
        coerce(&schema, &mut value);
        value
    }

    #[test]
    fn json_is_found_whole_fenced_or_embedded() {
        let expected = json!({"a": 1});
        for text in [
            r#"{"a": 1}"#,
            "  {\"a\": 1}\n",
            "Here it is:\n```json\n{\"a\": 1}\n```\nAnything else?",
            "```JSON\n{\"a\": 1}\n```",
            "```\n{\"a\": 1}\n```",
            "```python\nprint(1)\n```\n```json\n{\"a\": 1}\n```",
            "Sure! The result is {\"a\": 1}. Hope that helps.",
        ] {
            assert_eq!(extract_json(text), Ok(expected.clone()), "{text:?}");
        }
        assert_eq!(
            extract_json("```json\n{\"a\": {\"b\": [1, 2]}}\n```"),
            Ok(json!({"a": {"b": [1, 2]}}))
        );
    }

    #[test]
    fn text_without_json_fails_with_a_reason() {
        assert_eq!(extract_json(" "), Err("the answer is empty".into()));
        assert_eq!(
            extract_json("I cannot find an invoice here."),
            Err("the answer holds no JSON object".into())
        );
        let err = extract_json("Result: {\"a\": 1,}").unwrap_err();
        assert!(
            err.starts_with("the JSON in the answer does not parse"),
            "{err}"
        );
    }

    #[test]
    fn numbers_as_strings_become_numbers_where_the_schema_says_number() {
        let schema = json!({"type": "object", "properties": {"score": {"type": "number"}}});
        // DeepSeek answers a number, Gemini a string: both end up the same.
        assert_eq!(
            coerced(schema.clone(), json!({"score": 4.5})),
            json!({"score": 4.5})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"score": "4.5"})),
            json!({"score": 4.5})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"score": " 12 "})),
            json!({"score": 12})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"score": "1,234.50"})),
            json!({"score": 1234.5})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"score": "-1,000"})),
            json!({"score": -1000})
        );
        for kept in ["1,5", "12,34", "4.5 EUR", "NaN", "inf", "0x10", "", "-"] {
            assert_eq!(
                coerced(schema.clone(), json!({"score": kept})),
                json!({"score": kept}),
                "{kept:?}"
            );
        }
    }

    #[test]
    fn integers_only_from_whole_numbers() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        assert_eq!(
            coerced(schema.clone(), json!({"n": "12"})),
            json!({"n": 12})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"n": "12.0"})),
            json!({"n": 12})
        );
        assert_eq!(
            coerced(schema.clone(), json!({"n": "12.5"})),
            json!({"n": "12.5"})
        );
        assert_eq!(
            coerced(schema, json!({"n": "9007199254740993"})),
            json!({"n": 9_007_199_254_740_993_u64})
        );
    }

    #[test]
    fn strings_stay_strings_where_the_schema_allows_a_string() {
        let schema = json!({"type": "object", "properties": {
            "zip": {"type": "string"},
            "either": {"type": ["string", "number"]},
            "untyped": {}
        }});
        let v = json!({"zip": "02139", "either": "7", "untyped": "8", "extra": "9"});
        assert_eq!(coerced(schema, v.clone()), v);
    }

    #[test]
    fn coercion_follows_arrays_nested_objects_unions_and_refs() {
        let schema = json!({
            "type": "object",
            "properties": {
                "lines": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"qty": {"type": "integer"}, "price": {"type": ["number", "null"]}}
                }},
                "supplier": {"type": "object", "properties": {
                    "vat_registered": {"type": "boolean"},
                    "rating": {"anyOf": [{"type": "number"}, {"type": "null"}]}
                }},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
                "total": {"$ref": "#/$defs/money"}
            },
            "additionalProperties": {"type": "number"},
            "$defs": {"money": {"type": "number"}}
        });
        let v = json!({
            "lines": [{"qty": "2", "price": "9.99"}, {"qty": 1, "price": null}],
            "supplier": {"vat_registered": "True", "rating": "4.5"},
            "pair": ["7", "7"],
            "total": "19.98",
            "tip": "2"
        });
        assert_eq!(
            coerced(schema, v),
            json!({
                "lines": [{"qty": 2, "price": 9.99}, {"qty": 1, "price": null}],
                "supplier": {"vat_registered": true, "rating": 4.5},
                "pair": ["7", 7],
                "total": 19.98,
                "tip": 2
            })
        );
    }

    #[test]
    fn a_self_referring_schema_does_not_loop() {
        let schema = json!({"$ref": "#"});
        assert_eq!(coerced(schema, json!("1")), json!("1"));
    }

    #[test]
    fn check_extracts_coerces_and_validates() {
        let r = rule(json!({
            "type": "object",
            "properties": {
                "total": {"type": "number"},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "issued": {"type": "string", "format": "date"}
            },
            "required": ["total", "currency"]
        }));
        assert_eq!(r.name(), "test_job");
        assert_eq!(
            r.check("```json\n{\"total\": \"4.5\", \"currency\": \"EUR\"}\n```"),
            Ok(json!({"total": 4.5, "currency": "EUR"}))
        );
        assert_eq!(
            r.check("{\"total\": 4.5, \"currency\": \"EUR\"}"),
            Ok(json!({"total": 4.5, "currency": "EUR"}))
        );
        let reason = r
            .check(r#"{"total": "lots", "currency": "EURO"}"#)
            .unwrap_err();
        assert!(
            reason.contains("/total: \"lots\" is not of type \"number\""),
            "{reason}"
        );
        assert!(reason.contains("/currency: "), "{reason}");
        let reason = r
            .check(r#"{"currency": "EUR", "total": 1, "issued": "31/12/2024"}"#)
            .unwrap_err();
        assert!(
            reason.contains("/issued: ") && reason.contains("date"),
            "{reason}"
        );
        let reason = r.check(r#"{"currency": "EUR"}"#).unwrap_err();
        assert!(
            reason.starts_with("/: ") && reason.contains("\"total\""),
            "{reason}"
        );
        assert!(r.check("no idea").is_err());
    }

    #[test]
    fn schema_names_follow_openai_rules() {
        assert_eq!(schema_name("invoice-extract"), "invoice-extract");
        assert_eq!(
            schema_name("Rechnungen / 2024 (ä)"),
            "Rechnungen___2024____"
        );
        assert_eq!(schema_name(&"x".repeat(100)).len(), 64);
        assert_eq!(schema_name(""), "output");
    }
}
