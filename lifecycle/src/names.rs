//! Names that are stored and sent as plain strings (in records, webhook bodies and `/metrics`
//! labels) but handled as enums: [`named!`] writes such an enum with its string form, and an
//! `Other` variant that keeps a name another version wrote, so an old record still loads and
//! still says what it said.

/// An enum of names, each variant with the exact string it is stored and sent as, plus
/// `Other(String)` for a name this version does not know. It serializes as that string.
macro_rules! named {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A name this version does not know (another version wrote it), kept as it is.
            Other(String),
        }

        impl $name {
            /// The name as stored and sent.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match $name::from(text.as_str()) {
                    $name::Other(_) => $name::Other(text),
                    known => known,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d).map($name::from)
            }
        }
    };
}

pub(crate) use named;

#[cfg(test)]
mod tests {
    named! {
        /// A test enum.
        enum Color {
            Red => "red",
            DarkBlue => "dark_blue",
        }
    }

    #[test]
    fn a_name_round_trips_as_its_string_and_an_unknown_one_is_kept() {
        assert_eq!(serde_json::to_string(&Color::DarkBlue).unwrap(), r#""dark_blue""#);
        assert_eq!(serde_json::from_str::<Color>(r#""red""#).unwrap(), Color::Red);
        let other: Color = serde_json::from_str(r#""green""#).unwrap();
        assert_eq!(other, Color::Other("green".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), r#""green""#);
        assert_eq!(Color::from(String::from("red")), "red");
    }
}
