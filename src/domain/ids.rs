//! Identifiers with validated constructors; once parsed, an id is known to be well-formed.

use std::{fmt, sync::Arc};

use super::Error;

fn check(value: &str, max: usize, allowed: impl Fn(char) -> bool, what: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid("", format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::invalid(
            "",
            format!("{what} is longer than {max} characters"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(Error::invalid(
            "",
            format!("{what} contains {bad:?}; allowed are {}", allowed_text(max)),
        ));
    }
    Ok(())
}

fn allowed_text(max: usize) -> &'static str {
    match max {
        32 => "a-z 0-9 _ -",
        128 => "A-Z a-z 0-9 . _ - @ | : +",
        _ => "A-Z a-z 0-9 . _ -",
    }
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `value`. Errors name no field; callers add it.
            pub fn parse(value: &str) -> Result<Self, Error> {
                check(value, $max, $allowed, $what)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A car park's operator-chosen id: 1-64 characters of `A-Za-z0-9._-`.
    CarParkId, "car park id", 64, id_char
);
id_type!(
    /// A shared offer's id: 1-64 characters of `A-Za-z0-9._-`, chosen by its host or
    /// made by the server.
    OfferId, "offer id", 64, id_char
);
id_type!(
    /// An operator's id: 1-64 characters of `A-Za-z0-9._-`.
    OperatorId, "operator id", 64, id_char
);
id_type!(
    /// A bay within a car park: 1-64 characters of `A-Za-z0-9._-`.
    BayId, "bay id", 64, id_char
);
id_type!(
    /// A driver: the `sub` of their token. 1-128 characters of `A-Za-z0-9._-@|:+`
    /// (identity providers' subjects look like `auth0|5f3c…` or `user@example.com`).
    DriverId, "driver id", 128, |c: char| id_char(c) || matches!(c, '@' | '|' | ':' | '+')
);
id_type!(
    /// A region (city or area), the unit of locality: 1-32 characters of `a-z0-9_-`.
    RegionId, "region", 32, |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
);

impl RegionId {
    /// A region for places (car parks, shared offers): one starting with `_` is
    /// reserved for the server's own shards (`_accounts-<n>`).
    pub fn parse_place(value: &str) -> Result<Self, Error> {
        if value.starts_with('_') {
            return Err(Error::invalid(
                "",
                "regions starting with '_' are reserved for the server",
            ));
        }
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn car_park_ids_follow_the_contract() {
        assert!(CarParkId::parse("qd-000123").is_ok());
        assert!(CarParkId::parse("A.b_c-9").is_ok());
        assert!(CarParkId::parse(&"x".repeat(64)).is_ok());
        assert!(CarParkId::parse(&"x".repeat(65)).is_err());
        assert!(CarParkId::parse("").is_err());
        assert!(CarParkId::parse("a b").is_err());
        assert!(CarParkId::parse("停车场").is_err());
    }

    #[test]
    fn regions_are_lowercase() {
        assert!(RegionId::parse("qingdao").is_ok());
        assert!(RegionId::parse("Qingdao").is_err());
        assert!(RegionId::parse(&"q".repeat(33)).is_err());
        assert!(RegionId::parse_place("_accounts-0").is_err());
        assert!(RegionId::parse_place("qingdao").is_ok());
    }
}
