//! Values parsed once, when the configuration is read: addresses, ranges, URLs, and "unset" as
//! `None`. In TOML and in `WAKEWAY_*` variables each is still the string it always was (an empty
//! string meaning unset), so files and environments written for earlier versions read the same.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An inclusive range of numbers written `first-last` (`20000-29999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberRange<T> {
    pub first: T,
    pub last: T,
}

impl<T: Copy> NumberRange<T> {
    pub fn range(&self) -> RangeInclusive<T> {
        self.first..=self.last
    }
}

impl<T: FromStr + PartialOrd + Copy> FromStr for NumberRange<T> {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        let (first, last) = text.split_once('-').ok_or(())?;
        let (first, last): (T, T) = (first.trim().parse().map_err(drop)?, last.trim().parse().map_err(drop)?);
        if first <= last { Ok(NumberRange { first, last }) } else { Err(()) }
    }
}

impl<T: fmt::Display> fmt::Display for NumberRange<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Loopback ports for local workspaces (`workspace_ports`).
pub type PortRange = NumberRange<u16>;
/// Uids for isolated local workspaces (`[local] uids`).
pub type UidRange = NumberRange<u32>;

/// `(scheme, rest)` of an `http://` or `https://` URL.
fn http_scheme(url: &str) -> Result<(&str, &str), ()> {
    let (scheme, rest) = url.split_once("://").ok_or(())?;
    if scheme == "http" || scheme == "https" { Ok((scheme, rest)) } else { Err(()) }
}

/// `public_url`, taken apart: workspace URLs are built from its scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub scheme: String,
    pub host: String,
    /// None: the scheme's default port.
    pub port: Option<u16>,
}

impl FromStr for PublicUrl {
    type Err = ();
    fn from_str(url: &str) -> Result<Self, ()> {
        let (scheme, rest) = http_scheme(url)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(drop)?)),
            None => (rest, None),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = port.filter(|p| *p != default_port);
        if !crate::valid_domain(host) {
            return Err(());
        }
        Ok(PublicUrl { scheme: scheme.into(), host: host.into(), port })
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}://{}:{port}", self.scheme, self.host),
            None => write!(f, "{}://{}", self.scheme, self.host),
        }
    }
}

/// An absolute `http(s)://host[:port]/path` URL that webhooks are posted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(pub String);

impl FromStr for WebhookUrl {
    type Err = ();
    fn from_str(url: &str) -> Result<Self, ()> {
        let (_, rest) = http_scheme(url)?;
        let authority = rest.split(['/', '?', '#']).next().ok_or(())?;
        let ok = !authority.is_empty()
            && !authority.contains('@')
            && authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
            && url.bytes().all(|b| b.is_ascii_graphic());
        if ok { Ok(WebhookUrl(url.into())) } else { Err(()) }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value written as a string in TOML: how to read and write it, and what to say when it does
/// not parse (naming the key and showing a good value).
pub(crate) trait Textual: Sized {
    fn parse_text(text: &str) -> Result<Self, ()>;
    fn to_text(&self) -> String;
}

impl<T: FromStr + fmt::Display> Textual for T {
    fn parse_text(text: &str) -> Result<Self, ()> {
        text.parse().map_err(drop)
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

/// A string that is kept as it is; empty means unset.
pub(crate) fn some_text(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// serde for a key whose value is written as a string that must parse (`T::from_str`), with the
/// message `$what` ("must look like …") when it does not.
macro_rules! textual {
    ($module:ident, $type:ty, $key:literal, $what:literal) => {
        pub(crate) mod $module {
            use super::*;
            pub fn serialize<S: Serializer>(value: &$type, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&Textual::to_text(value))
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$type, D::Error> {
                let text = String::deserialize(d)?;
                <$type as Textual>::parse_text(text.trim())
                    .map_err(|()| serde::de::Error::custom(format!(concat!($key, " {:?} ", $what), text)))
            }
        }
    };
}

/// serde for an optional key written as a string, empty when unset.
macro_rules! optional {
    ($module:ident, $type:ty, $key:literal, $what:literal) => {
        pub(crate) mod $module {
            use super::*;
            pub fn serialize<S: Serializer>(value: &Option<$type>, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&value.as_ref().map(Textual::to_text).unwrap_or_default())
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$type>, D::Error> {
                let text = String::deserialize(d)?;
                if text.trim().is_empty() {
                    return Ok(None);
                }
                <$type as Textual>::parse_text(text.trim())
                    .map(Some)
                    .map_err(|()| serde::de::Error::custom(format!(concat!($key, " {:?} ", $what), text)))
            }
        }
    };
}

textual!(port_range, PortRange, "workspace_ports", "must look like \"20000-29999\"");
textual!(uid_range, UidRange, "local.uids", "must look like \"200000-299999\"");
optional!(opt_addr, SocketAddr, "tls_listen", "must be an address like 0.0.0.0:8443 (or empty)");
optional!(opt_public_url, PublicUrl, "public_url", "must look like http://host[:port] or https://host[:port]");
optional!(
    opt_webhook_url,
    WebhookUrl,
    "webhook_url",
    "must look like http://host[:port]/path or https://host[:port]/path"
);

/// serde for optional text and paths: an empty string is `None`.
pub(crate) mod opt_string {
    use super::*;
    pub fn serialize<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.as_deref().unwrap_or_default())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(some_text(&String::deserialize(d)?))
    }
}

pub(crate) mod opt_path {
    use super::*;
    pub fn serialize<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(path) => path.serialize(s),
            None => s.serialize_str(""),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let path = PathBuf::deserialize(d)?;
        Ok((!path.as_os_str().is_empty()).then_some(path))
    }
}
