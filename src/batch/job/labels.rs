//! The `labels` output rule (classification): the answer must name one of the job's labels.
//!
//! Models wrap a label in quotes, capitals, a full stop or extra spaces; those differences are
//! normalised away on both sides before comparing, and `aliases` map other spellings the job's
//! author has seen ("feature request") to a label. Nothing else is guessed: an answer that is a
//! sentence, or a label followed by an explanation, fails the rule and the item is retried.

use std::collections::{BTreeMap, HashMap};

use super::Problems;

/// The labels of a classification job and every accepted spelling of them.
#[derive(Debug, Clone)]
pub struct Labels {
    labels: Vec<String>,
    /// Normalised label or alias → index into `labels`.
    lookup: HashMap<String, usize>,
}

/// Longest answer quoted back in a failure reason: enough to see what went wrong.
const QUOTED_MAX_CHARS: usize = 80;

/// Characters that models put around a one-word answer.
const WRAPPERS: [char; 7] = [
    '"', '\'', '`', '\u{201c}', '\u{201d}', '\u{2018}', '\u{2019}',
];

impl Labels {
    /// Checks `output.labels` and `output.aliases`, reporting each problem at its key path.
    pub(super) fn new(
        labels: Vec<String>,
        aliases: BTreeMap<String, String>,
        problems: &mut Problems,
    ) -> Self {
        let mut lookup = HashMap::new();
        if labels.is_empty() {
            problems.add("output.labels", "must not be empty");
        }
        for (i, label) in labels.iter().enumerate() {
            let key = normalise(label);
            if key.is_empty() {
                problems.add(format!("output.labels[{i}]"), "must not be empty");
            } else if let Some(first) = lookup.insert(key, i) {
                problems.add(
                    format!("output.labels[{i}]"),
                    format!("{label:?} is the same label as output.labels[{first}] once case and spaces are ignored"),
                );
            }
        }
        for (alias, target) in aliases {
            let key = format!("output.aliases.{}", toml_key(&alias));
            let Some(&index) = lookup.get(&normalise(target.as_str())) else {
                problems.add(key, format!("{target:?} is not one of the labels"));
                continue;
            };
            let normalised = normalise(&alias);
            if normalised.is_empty() {
                problems.add(key, "an alias must not be empty");
                continue;
            }
            match lookup.get(&normalised) {
                Some(&other) if other != index => problems.add(
                    key,
                    format!(
                        "already means {:?}, so it cannot mean {target:?}",
                        labels.get(other).map_or("", String::as_str)
                    ),
                ),
                _ => {
                    lookup.insert(normalised, index);
                }
            }
        }
        Self { labels, lookup }
    }

    /// The labels as the job file spells them.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The canonical label that `answer` names, or why it names none.
    pub fn check(&self, answer: &str) -> Result<&str, String> {
        let key = normalise(answer);
        if let Some(label) = self.lookup.get(&key).and_then(|&i| self.labels.get(i)) {
            return Ok(label);
        }
        let expected = self.labels.join(", ");
        if key.is_empty() {
            return Err(format!("the answer is empty, not one of {expected}"));
        }
        let trimmed = answer.trim();
        let quoted: String = if trimmed.chars().count() > QUOTED_MAX_CHARS {
            let head: String = trimmed.chars().take(QUOTED_MAX_CHARS).collect();
            format!("{head}…")
        } else {
            trimmed.to_string()
        };
        Err(format!("{quoted:?} is not one of {expected}"))
    }
}

/// Lower-case, single spaces, no surrounding quotes or backticks, no trailing full stop. Applied
/// until nothing changes, so `"Bug."` and `` `bug`. `` both come down to `bug`.
pub fn normalise(text: &str) -> String {
    let mut s = text.trim();
    loop {
        let before = s.len();
        s = s.trim_matches(WRAPPERS).trim();
        s = s.strip_suffix('.').unwrap_or(s).trim_end();
        if s.len() == before {
            break;
        }
    }
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// A key as it would be written in TOML, for key paths: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triage() -> Labels {
        let mut problems = Problems::default();
        let labels = ["billing", "bug", "feature_request", "account", "other"]
            .map(String::from)
            .to_vec();
        let aliases = [
            ("feature request", "feature_request"),
            ("invoice", "billing"),
        ]
        .map(|(a, t)| (a.to_string(), t.to_string()))
        .into();
        let l = Labels::new(labels, aliases, &mut problems);
        assert!(problems.0.is_empty(), "{:?}", problems.0);
        l
    }

    #[test]
    fn normalisation_ignores_case_spaces_quotes_and_a_full_stop() {
        assert_eq!(normalise("  Feature   Request \n"), "feature request");
        assert_eq!(normalise("\"Bug.\""), "bug");
        assert_eq!(normalise("`bug`."), "bug");
        assert_eq!(normalise("'billing'"), "billing");
        assert_eq!(normalise("\u{201c}Account\u{201d}"), "account");
        assert_eq!(normalise(" . "), "");
    }

    #[test]
    fn answers_map_to_the_canonical_label() {
        let l = triage();
        for (answer, label) in [
            ("bug", "bug"),
            ("BUG", "bug"),
            (" Bug.\n", "bug"),
            ("\"billing\"", "billing"),
            ("`account`", "account"),
            ("Feature_Request", "feature_request"),
            ("Feature request.", "feature_request"),
            ("  feature   REQUEST ", "feature_request"),
            ("Invoice", "billing"),
        ] {
            assert_eq!(l.check(answer), Ok(label), "{answer:?}");
        }
    }

    #[test]
    fn anything_else_fails_with_the_expected_labels() {
        let l = triage();
        assert_eq!(
            l.check("Bug report").unwrap_err(),
            "\"Bug report\" is not one of billing, bug, feature_request, account, other"
        );
        assert!(l.check("bug: the app crashes").is_err());
        assert!(
            l.check("feature-request").is_err(),
            "no guessing beyond the normalisations"
        );
        assert!(
            l.check("  ")
                .unwrap_err()
                .starts_with("the answer is empty")
        );
        let long = "x".repeat(200);
        let reason = l.check(&long).unwrap_err();
        assert!(reason.contains('…') && reason.len() < 200, "{reason}");
    }

    #[test]
    fn bad_labels_and_aliases_are_reported_at_their_key() {
        let mut p = Problems::default();
        let labels = ["Bug", "", "bug "].map(String::from).to_vec();
        let aliases = [("defect", "bugs"), ("BUG", "Bug"), ("", "Bug")]
            .map(|(a, t)| (a.to_string(), t.to_string()))
            .into();
        Labels::new(labels, aliases, &mut p);
        let got: Vec<String> = p.0.iter().map(|(k, r)| format!("{k}: {r}")).collect();
        assert_eq!(
            got,
            [
                "output.labels[1]: must not be empty",
                "output.labels[2]: \"bug \" is the same label as output.labels[0] once case and spaces are ignored",
                "output.aliases.\"\": an alias must not be empty",
                "output.aliases.defect: \"bugs\" is not one of the labels",
            ]
        );
        let mut p = Problems::default();
        Labels::new(Vec::new(), BTreeMap::new(), &mut p);
        assert_eq!(p.0, [("output.labels".into(), "must not be empty".into())]);
    }
}
