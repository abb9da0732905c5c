//! NATS subject names, all under the configured prefix (`llm` by default).

/// The task token (`llm.chat.auto`) that always asks the classifier which group serves.
pub const AUTO_TASK: &str = "auto";

/// Where the door a request came in by takes chat and embeddings requests, for the message that
/// sends a request of one kind to the other: these subjects unless the door says otherwise
/// (`RequestOptions::endpoints`; the HTTP door names its paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub chat: &'static str,
    pub embed: &'static str,
}

impl Endpoints {
    /// The NATS door's, under the default prefix.
    pub const NATS: Self = Self {
        chat: "llm.chat.<task>",
        embed: "llm.embed.<task>",
    };
}

impl Default for Endpoints {
    fn default() -> Self {
        Self::NATS
    }
}

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    chat: String,
    embed: String,
    endpoints: Endpoints,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        let endpoints = if prefix == "llm" {
            Endpoints::NATS
        } else {
            // Leaked once per `Subjects` (serve builds two), so that a request's options carry
            // the wording as two `&'static str`, copied for free, whatever the prefix.
            let leak = |door: &str| &*Box::leak(format!("{prefix}.{door}.<task>").into_boxed_str());
            Endpoints {
                chat: leak("chat"),
                embed: leak("embed"),
            }
        };
        Self {
            prefix: prefix.to_string(),
            chat: format!("{prefix}.chat."),
            embed: format!("{prefix}.embed."),
            endpoints,
        }
    }

    /// How error messages name this door's subjects (`llm.chat.<task>`, under this prefix).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// `llm.chat.>`: every synchronous request.
    pub fn chat_wildcard(&self) -> String {
        format!("{}>", self.chat)
    }

    pub fn chat(&self, task: &str) -> String {
        format!("{}{task}", self.chat)
    }

    /// The `<task>` token of a chat subject; `None` for a subject outside `llm.chat.`. Anything
    /// after the task token is ignored (`llm.chat.title.v2` is task `title`).
    pub fn task_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.chat)?;
        Some(rest.split('.').next().unwrap_or(rest))
    }

    /// `llm.embed.>`: every embeddings request (docs/contract.md §10).
    pub fn embed_wildcard(&self) -> String {
        format!("{}>", self.embed)
    }

    pub fn embed(&self, task: &str) -> String {
        format!("{}{task}", self.embed)
    }

    /// The `<task>` token of an embed subject, like `task_of` for chat subjects.
    pub fn embed_task_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.embed)?;
        Some(rest.split('.').next().unwrap_or(rest))
    }

    /// `llm.submit.>`: every async job (docs/contract.md §1b).
    pub fn submit_wildcard(&self) -> String {
        format!("{}.submit.>", self.prefix)
    }

    pub fn submit(&self, task: &str) -> String {
        format!("{}.submit.{task}", self.prefix)
    }

    /// The `<task>` token of a submit subject, like `task_of` for chat subjects.
    pub fn submit_task_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".submit.")?;
        Some(rest.split('.').next().unwrap_or(rest))
    }

    /// `llm.result.>`: every job result.
    pub fn result_wildcard(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    /// `llm.result.<job_id>`: where a job's result goes unless it names another subject.
    pub fn result(&self, job_id: &str) -> String {
        format!("{}.result.{job_id}", self.prefix)
    }

    /// Whether `subject` is a concrete subject under `llm.result.` (what the results stream holds).
    pub fn is_result(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".result."))
            .is_some_and(|rest| rest.split('.').all(crate::config::is_token))
    }

    pub fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }

    pub fn status_events(&self) -> String {
        format!("{}.status.events", self.prefix)
    }

    /// `llm.batch.submit`: starts a batch inside `serve`.
    pub fn batch_submit(&self) -> String {
        format!("{}.batch.submit", self.prefix)
    }

    /// `llm.batch.<id>.<verb>` for one batch (`results`, `progress`, `status`, `cancel`); with
    /// `id = "*"`, the wildcard over every batch.
    pub fn batch(&self, id: &str, verb: BatchVerb) -> String {
        format!("{}.batch.{id}.{}", self.prefix, verb.as_str())
    }

    /// The batch id of a `llm.batch.<id>.<verb>` subject.
    pub fn batch_id_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".batch.")?
            .split('.')
            .next()
            .filter(|id| !id.is_empty())
    }
}

/// What a `llm.batch.<id>.<verb>` subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchVerb {
    /// Each finished item's output line.
    Results,
    /// Counts every second, and a last message with the state.
    Progress,
    /// Request/reply: the batch's counts.
    Status,
    /// Request/reply: stop the batch.
    Cancel,
}

impl BatchVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Results => "results",
            Self::Progress => "progress",
            Self::Status => "status",
            Self::Cancel => "cancel",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_is_the_token_after_chat() {
        let s = Subjects::new("llm");
        assert_eq!(s.chat_wildcard(), "llm.chat.>");
        assert_eq!(s.task_of("llm.chat.title"), Some("title"));
        assert_eq!(s.task_of("llm.chat.title.v2"), Some("title"));
        assert_eq!(s.task_of("llm.status"), None);
        assert_eq!(
            Subjects::new("acme.llm").task_of("acme.llm.chat.x"),
            Some("x")
        );
    }

    /// Error messages name the subjects of the prefix in use, not the default's.
    #[test]
    fn endpoints_follow_the_prefix() {
        assert_eq!(Subjects::new("llm").endpoints(), Endpoints::NATS);
        let e = Subjects::new("acme.llm").endpoints();
        assert_eq!(e.chat, "acme.llm.chat.<task>");
        assert_eq!(e.embed, "acme.llm.embed.<task>");
    }

    #[test]
    fn batch_subjects_and_their_ids() {
        let s = Subjects::new("acme.llm");
        assert_eq!(s.batch_submit(), "acme.llm.batch.submit");
        assert_eq!(
            s.batch("b1", BatchVerb::Results),
            "acme.llm.batch.b1.results"
        );
        assert_eq!(s.batch("*", BatchVerb::Cancel), "acme.llm.batch.*.cancel");
        assert_eq!(s.batch_id_of("acme.llm.batch.b1.status"), Some("b1"));
        assert_eq!(s.batch_id_of("acme.llm.chat.x"), None);
    }

    #[test]
    fn submit_and_result_subjects() {
        let s = Subjects::new("llm");
        assert_eq!(s.submit_wildcard(), "llm.submit.>");
        assert_eq!(s.submit_task_of("llm.submit.extract"), Some("extract"));
        assert_eq!(s.submit_task_of("llm.chat.extract"), None);
        assert_eq!(s.result("j1"), "llm.result.j1");
        assert!(s.is_result("llm.result.j1"));
        assert!(s.is_result("llm.result.app.j1"));
        assert!(!s.is_result("llm.result."));
        assert!(!s.is_result("llm.result.*"));
        assert!(!s.is_result("llm.results.j1"));
        assert!(!s.is_result("other.result.j1"));
    }
}
