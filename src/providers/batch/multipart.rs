//! `multipart/form-data` for OpenAI's file upload, written by hand: two fields (`purpose` and the
//! JSONL `file`), so a dependency for it would be more than the code.

/// The content type and body of a form with `purpose` and `file` (named `filename`) fields.
pub(super) fn form(purpose: &str, filename: &str, lines: &[Vec<u8>]) -> (String, Vec<u8>) {
    // A boundary no JSONL line can hold: JSON strings escape control characters, and this one
    // starts with a fresh random part.
    let boundary = format!("switchyard-{}", uuid::Uuid::new_v4().simple());
    let size: usize = lines.iter().map(Vec::len).sum();
    let mut body = Vec::with_capacity(size + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    for line in lines {
        body.extend_from_slice(line);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_form_has_both_fields_and_ends_with_its_boundary() {
        let (ct, body) = super::form("batch", "b.jsonl", &[b"{\"a\":1}\n".to_vec()]);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"purpose\"\r\n\r\nbatch\r\n"));
        assert!(text.contains(
            "filename=\"b.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"a\":1}\n\r\n"
        ));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }
}
