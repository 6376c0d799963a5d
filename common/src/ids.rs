//! Typed identifiers of the objects the server keeps: registration entries and tasks.
//!
//! Both are opaque, server-assigned strings (UUIDv7 today; releases before it used UUIDv4).
//! A distinct type for each means an entry id can never be passed where a task id is
//! expected, and every id that arrives from outside (the wire, the command line, a token
//! claim) has been bounded and checked for printable ASCII before anything looks it up.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest id accepted anywhere (ids are UUIDs; this only bounds hostile input).
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// `entry` or `task`.
        kind: &'static str,
    },
    /// The string is longer than [`MAX_ID_LEN`].
    #[error("{kind} id is longer than {MAX_ID_LEN} bytes")]
    TooLong {
        /// `entry` or `task`.
        kind: &'static str,
    },
    /// The string holds whitespace, a control character or non-ASCII.
    #[error("{kind} id may hold only visible ASCII characters")]
    BadCharacter {
        /// `entry` or `task`.
        kind: &'static str,
    },
}

/// A malformed id in a request is the caller's mistake.
impl From<IdError> for tonic::Status {
    fn from(e: IdError) -> Self {
        Self::invalid_argument(e.to_string())
    }
}

fn check(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        Err(IdError::Empty { kind })
    } else if s.len() > MAX_ID_LEN {
        Err(IdError::TooLong { kind })
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        Err(IdError::BadCharacter { kind })
    } else {
        Ok(())
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Shared text: a clone is a reference count, not a copy (the agent keys its
        /// cache by the ids its entries also hold, and a published cache is copied on
        /// every change).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// A new id, unique and ordered by creation time (UUIDv7).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string().into())
            }

            /// Checks `s` (non-empty, at most [`MAX_ID_LEN`] bytes, visible ASCII).
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s)?;
                Ok(Self(s.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0.as_ref().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.into_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The id of a registration entry.
    EntryId,
    "entry"
);
id_type!(
    /// The id of a task.
    TaskId,
    "task"
);
id_type!(
    /// The id of an identity template.
    TemplateId,
    "template"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_are_ordered_by_creation() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert!(a < b, "{a} then {b}");
        assert_eq!(TaskId::parse(a.as_str()).unwrap(), a);
        assert_eq!(EntryId::generate().as_str().len(), 36);
    }

    #[test]
    fn release_ids_are_accepted() {
        let v4 = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(EntryId::parse(v4).unwrap().as_str(), v4);
        assert_eq!(v4.parse::<TaskId>().unwrap(), v4);
    }

    #[test]
    fn hostile_ids_are_refused_with_their_kind() {
        assert_eq!(EntryId::parse(""), Err(IdError::Empty { kind: "entry" }));
        assert_eq!(
            TaskId::parse("a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { kind: "task" })
        );
        assert!(TaskId::parse("a".repeat(MAX_ID_LEN)).is_ok());
        for bad in ["a b", "a\nb", "a\u{7f}", "é", "a\0"] {
            assert_eq!(
                TaskId::parse(bad),
                Err(IdError::BadCharacter { kind: "task" }),
                "{bad:?}"
            );
        }
        assert_eq!(
            EntryId::parse("x y").unwrap_err().to_string(),
            "entry id may hold only visible ASCII characters"
        );
    }

    #[test]
    fn serde_is_a_plain_string_and_checks_on_the_way_in() {
        let id = EntryId::parse("e-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"e-1\"");
        assert_eq!(serde_json::from_str::<EntryId>("\"e-1\"").unwrap(), id);
        assert!(serde_json::from_str::<EntryId>("\"\"").is_err());
        assert_eq!(format!("{id:?}"), "EntryId(\"e-1\")");
    }
}
