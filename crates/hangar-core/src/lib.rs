//! Hangar's domain, with no I/O: what an agent, a build, an instance and a job are,
//! which states they move through, and what a valid request for them looks like.
//!
//! Everything here is pure so that the store, the API and (later) the controller agree
//! on one meaning of every field, and so that it can be tested without a database.
//!
//! # Layout
//! - [`agent_url`]: path-style agent URLs (`<cloud base URL>/agents/<name>`).
//! - [`id`]: opaque, prefixed, sortable identifiers (`agent_…`, `inst_…`).
//! - [`logs`]: a level and a message from whatever a replica prints; stored log lines.
//! - [`quantity`]: Kubernetes-style quantities (`"0.5"`, `"250m"`, `"512Mi"`).
//! - [`resources`]: one resources type that reads both APIs' spellings.
//! - [`status`]: lifecycle enums and the one place statuses are derived.
//! - [`spec`]: the parts of an agent blueprint: runtime, scaling, config, source.
//! - [`validate`]: names, environment maps, metadata, secret references, redaction.
//! - [`model`]: the records the store keeps and the API renders.
//! - [`contract`]: the run command a source tree's files ask for.
//! - [`image`]: how a replica of an OCI image artifact runs (its `image.json`).
//! - [`docker`]: docker clouds: the image a build makes, how it runs, the cloud's config.
//! - [`kubernetes`]: kubernetes clouds: the cloud's config, the image a replica pulls.

pub mod agent_url;
pub mod contract;
pub mod docker;
pub mod events;
pub mod id;
pub mod image;
pub mod kubernetes;
pub mod logs;
pub mod model;
pub mod network;
pub mod quantity;
pub mod resources;
pub mod spec;
pub mod status;
pub mod validate;

/// A request field that is not acceptable, with the field's path and why.
///
/// The API renders it as `400 INVALID_REQUEST` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Dotted path of the offending field, e.g. `resources.cpu`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub message: String,
}

impl Invalid {
    /// An invalid `field` with a message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, nested under `parent` (`cpu` → `resources.cpu`).
    #[must_use]
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// A string that names no variant of a closed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value '{got}', expected one of: {}", expected.join(", "))]
pub struct UnknownVariant {
    /// The accepted spellings.
    pub expected: &'static [&'static str],
    /// What was given.
    pub got: String,
}

/// Declares a closed set of string values with serde, OpenAPI and `FromStr` from one
/// list, so the spelling on the wire, in the database and in docs cannot drift apart.
///
/// The spelling is taken as a `tt`, not a `literal`: a `literal` fragment reaches
/// the derives wrapped in an invisible group, which serde unwraps but utoipa does
/// not, so the document showed the variants' Rust names (`Sandbox`) while the wire
/// carries the spelling (`sandbox`).
#[macro_export]
macro_rules! string_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $variant:ident = $s:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        $vis enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value's spelling on the wire and in the store.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    _ => Err($crate::UnknownVariant { expected: &[$($s),+], got: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    string_enum! {
        /// A set whose spellings differ from its variants' names.
        enum Weather { Sunny = "sunny", HeavyRain = "heavy_rain" }
    }

    #[test]
    fn the_document_lists_the_wire_spellings_of_a_string_enum() {
        let schema = serde_json::to_value(Weather::schema()).expect("schema is JSON");
        let spellings: Vec<&str> = Weather::ALL.iter().map(|w| w.as_str()).collect();
        assert_eq!(schema["enum"], serde_json::json!(spellings));
        assert_eq!(spellings, ["sunny", "heavy_rain"]);
        assert_eq!(
            serde_json::to_value(Weather::HeavyRain).expect("JSON"),
            "heavy_rain"
        );
    }
}
