//! NATS subject names, all under the configured prefix (`llm` by default).

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
}
