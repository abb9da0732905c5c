//! NATS subject names, all under the configured prefix (`llm` by default).

/// The task token (`llm.chat.auto`) that always asks the classifier which group serves.
pub const AUTO_TASK: &str = "auto";

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    chat: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            chat: format!("{prefix}.chat."),
        }
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
