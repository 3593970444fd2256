//! Wire types of the Sesh API, shared by the Worker and its clients.
//!
//! Everything here is plain data plus strict parsing: unknown fields and
//! wrongly typed values are errors, lengths are counted in characters and
//! object sizes in bytes of compact JSON. `README.md` in this crate is the
//! contract as implemented.

#![warn(missing_docs)]

/// Gives a type deriving `Serialize`/`Deserialize` with
/// `#[serde(remote = "Self")]` trait impls that only accept a JSON object.
///
/// Derived struct (and internally tagged enum) deserializers also accept a
/// JSON array, taking fields by position; that would be a silent leniency
/// next to `deny_unknown_fields`. The derive with `remote = "Self"` produces
/// inherent `serialize`/`deserialize` functions, which these impls call,
/// the latter only from `visit_map`. Those inherent functions stay public
/// (serde gives them the type's visibility), so callers go through the
/// traits (`serde_json::from_str`, `T: Deserialize`), never
/// `Type::deserialize(..)` by path.
macro_rules! object_only {
    ($($ty:ident: $expecting:literal),+ $(,)?) => {$(
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;

                impl<'de> ::serde::de::Visitor<'de> for ObjectVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: ::serde::de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $ty::deserialize(::serde::de::value::MapAccessDeserializer::new(map))
                    }
                }

                deserializer.deserialize_map(ObjectVisitor)
            }
        }
    )+};
}

pub mod api;
pub mod error;
pub mod frames;
pub mod history;
pub mod ids;
pub mod limits;
pub mod presence;
pub mod quota;
pub mod session;

pub use error::*;
pub use frames::*;
pub use history::*;
pub use ids::*;
pub use limits::*;
pub use presence::*;
pub use quota::*;
pub use session::*;
