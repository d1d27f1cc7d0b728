//! Host → route: `vs-code-<id>.<domain>[:port]` is a workspace, anything else is the API.

use std::fmt;

/// A validated session id: 8 to 32 lowercase hex digits (the seed uses 8). It is part of a DNS
/// label and of resource names, so it is checked everywhere it enters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Box<str>);

impl SessionId {
    /// Parse an id; uppercase hex is accepted and lowercased.
    pub fn parse(text: &str) -> Option<SessionId> {
        let ok = (8..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| SessionId(text.to_ascii_lowercase().into_boxed_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

/// Where a request goes, decided from its host alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRoute {
    /// `vs-code-<id>.<domain>` with a well-formed id.
    Workspace(SessionId),
    /// `vs-code-<something>.<domain>` where `<something>` is not a valid id.
    BadWorkspace,
    /// Anything else: the management API.
    Api,
}

const PREFIX: &str = "vs-code-";

impl HostRoute {
    /// Route `host` (a Host header or `:authority`, possibly with a port) under `domain`.
    /// Case-insensitive; a trailing dot is ignored. Allocation-free unless it is a workspace.
    pub fn parse(host: &str, domain: &str) -> HostRoute {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() <= PREFIX.len() + domain.len() + 1 {
            return HostRoute::Api;
        }
        let split = name.len() - domain.len() - 1;
        if !name.is_char_boundary(split) {
            return HostRoute::Api;
        }
        let (label, rest) = name.split_at(split);
        if !rest.as_bytes()[0].eq(&b'.') || !rest[1..].eq_ignore_ascii_case(domain) {
            return HostRoute::Api;
        }
        if label.len() < PREFIX.len() || !label[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            return HostRoute::Api;
        }
        match SessionId::parse(&label[PREFIX.len()..]) {
            Some(id) => HostRoute::Workspace(id),
            None => HostRoute::BadWorkspace,
        }
    }
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str) -> HostRoute {
        HostRoute::Workspace(SessionId::parse(id).unwrap())
    }

    #[test]
    fn workspace_hosts_route_to_their_session() {
        let d = "localhost";
        assert_eq!(HostRoute::parse("vs-code-abc12345.localhost", d), ws("abc12345"));
        assert_eq!(HostRoute::parse("vs-code-abc12345.localhost:8080", d), ws("abc12345"));
        assert_eq!(HostRoute::parse("VS-Code-ABC12345.LocalHost:8080", d), ws("abc12345"));
        assert_eq!(HostRoute::parse("vs-code-abc12345.localhost.", d), ws("abc12345"));
        let d = "preview.example.com";
        assert_eq!(HostRoute::parse("vs-code-0123abcd.preview.example.com", d), ws("0123abcd"));
    }

    #[test]
    fn everything_else_is_the_api_or_a_bad_workspace() {
        let d = "example.com";
        for host in [
            "example.com",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "api.example.com",
            "vs-code-abc12345.example.org",
            "vs-code-abc12345.xexample.com",
            "vs-code-.example.com",
            "vs-code-abc12345.a.example.com.evil",
            "",
            ":",
            "vs-code-abc12345.example.com.evil.com",
            "vs-code-abc12345\u{e9}.example.com",
            "vs-code-\u{e9}example.com",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}.example.com",
        ] {
            let route = HostRoute::parse(host, d);
            assert!(matches!(route, HostRoute::Api | HostRoute::BadWorkspace), "{host} -> {route:?}");
        }
        assert_eq!(HostRoute::parse("vs-code-zzzzzzzz.example.com", d), HostRoute::BadWorkspace);
        assert_eq!(HostRoute::parse("vs-code-abc.example.com", d), HostRoute::BadWorkspace);
        assert_eq!(HostRoute::parse("a.vs-code-abc12345.example.com", d), HostRoute::Api);
        assert_eq!(HostRoute::parse("vs-code-abc12345.a.example.com", d), HostRoute::BadWorkspace);
    }

    #[test]
    fn ids_are_validated() {
        assert!(SessionId::parse("abc12345").is_some());
        assert_eq!(SessionId::parse("ABC12345").unwrap().as_str(), "abc12345");
        for bad in ["", "abc1234", "abc1234g", "../../etc", "abc12345 ", "é1234567", &"a".repeat(33)] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
