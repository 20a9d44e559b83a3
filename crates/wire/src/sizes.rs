//! Sizes are whole numbers of bytes; anything else is refused with a
//! sentence that says so.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

pub(super) fn size_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(BytesVisitor::bytes("size"))
}

pub(super) fn capacity_field<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(BytesVisitor::bytes("capacity"))
        .map(Some)
}

pub(super) fn rate_field<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(BytesVisitor {
            field: "split_rate_mbps",
            unit: "MB/s (10^6 bytes per second)",
            example: "128, or 0 for unlimited",
        })
        .map(Some)
}

pub(super) fn mirror_rate_field<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserializer
        .deserialize_any(BytesVisitor {
            field: "mirror_rate_mbps",
            unit: "MB/s (10^6 bytes per second)",
            example: "100, or 0 for unlimited",
        })
        .map(Some)
}

/// Accepts only a non-negative integer, and says plainly what is wrong
/// with anything else (the common mistake being "10G").
struct BytesVisitor {
    field: &'static str,
    unit: &'static str,
    example: &'static str,
}

impl BytesVisitor {
    fn bytes(field: &'static str) -> BytesVisitor {
        BytesVisitor {
            field,
            unit: "bytes",
            example: "10737418240",
        }
    }

    fn refuse<E: de::Error>(&self, got: impl fmt::Display) -> E {
        E::custom(format!(
            "`{}` must be a whole number of {}, like {}, not {got}; the API takes no units",
            self.field, self.unit, self.example
        ))
    }
}

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` as a whole number of {}", self.field, self.unit)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| self.refuse(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(self.refuse(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        Err(self.refuse(format_args!("the string {v:?}")))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u64, E> {
        Err(self.refuse(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Err(self.refuse("null"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.refuse("an array"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.refuse("an object"))
    }
}
