//! Kubernetes name rules (apimachinery's `validation` package), as pure predicates that return
//! the reason a name is invalid.

/// RFC 1123 label: 1-63 chars of `[a-z0-9-]`, starting and ending alphanumeric.
/// Used for namespaces, endpoint hostnames and most object names.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let bytes = s.as_bytes();
    let ok_ends =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS label: lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter. Service names use it.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s)?;
    if s.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS-1035 label: it must start with a lower-case letter"
        ))
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 chars. A single trailing dot
/// (fully-qualified form) is accepted for ExternalName targets by `external_name`.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    for label in s.split('.') {
        if let Err(why) = dns1123_label(label) {
            return Err(format!("{s:?} is not a valid DNS name: label {why}"));
        }
    }
    Ok(())
}

/// An ExternalName target: a DNS-1123 subdomain, optionally with one trailing dot.
pub fn external_name(s: &str) -> Result<(), String> {
    dns1123_subdomain(s.strip_suffix('.').unwrap_or(s))
}

/// IANA service name (port names): 1-15 chars of `[a-z0-9-]`, at least one letter, no
/// leading, trailing or doubled '-'.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{s:?} is not a valid port name: {why}"));
    if s.is_empty() || s.len() > 15 {
        return fail("must be 1-15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lower-case letters, digits and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return fail("must contain at least one letter");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return fail("'-' may not lead, trail or repeat");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("1web").is_ok());
        assert!(dns1123_label("Web").is_err());
        assert!(dns1123_label("-web").is_err());
        assert!(dns1123_label("web_1").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(
            dns1035_label("1web")
                .unwrap_err()
                .contains("start with a lower-case letter")
        );
        assert!(dns1035_label("web").is_ok());
    }

    #[test]
    fn subdomains_and_external_names() {
        assert!(dns1123_subdomain("my.db.example.com").is_ok());
        assert!(dns1123_subdomain("my..db").is_err());
        assert!(external_name("db.example.com.").is_ok());
        assert!(external_name("db example.com").is_err());
        assert!(external_name("").is_err());
    }

    #[test]
    fn port_names() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("http-metrics").is_ok());
        assert!(iana_svc_name("8080").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("this-name-is-too-long").is_err());
    }
}
