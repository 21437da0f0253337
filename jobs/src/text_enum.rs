//! Closed sets of words stored in `text` columns and sent in JSON (a generation's status, a resolution, an
//! export's state): [`text_enum!`] declares each as a Rust enum with its one spelling per variant, so code
//! matches on variants (exhaustively) and never compares strings. The database keeps its `CHECK (… IN …)`; the
//! enum and the check list the same words, and a word the code does not know fails to decode with its name.

/// A stored or received word that is not one of its type's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a known {type_name}")]
pub struct Unknown {
    pub type_name: &'static str,
    pub value: String,
}

/// Declares `enum Name { Variant = "word", … }` with `as_str`, `ALL`, `FromStr`, `Display`, serde (as the word)
/// and sqlx (as `text`, arrays included).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        // A private vocabulary may not need every item.
        #[allow(dead_code)]
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored and transmitted word.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text ),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::text_enum::Unknown;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err($crate::text_enum::Unknown {
                        type_name: stringify!($name),
                        value: value.to_owned(),
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <::std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                word.parse().map_err(|_| {
                    ::serde::de::Error::unknown_variant(&word, &[$($text),+])
                })
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> ::sqlx::Encode<'q, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<'q, ::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let word = <&str as ::sqlx::Decode<'r, ::sqlx::Postgres>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }
    };
}

pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    text_enum! {
        /// A test vocabulary.
        enum Colour {
            Red = "red",
            DarkBlue = "dark blue",
        }
    }

    #[test]
    fn each_variant_is_spelled_one_way_in_both_directions() {
        for colour in Colour::ALL {
            assert_eq!(colour.as_str().parse::<Colour>().unwrap(), *colour);
            let json = serde_json::to_string(colour).unwrap();
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), *colour);
        }
        assert_eq!(Colour::DarkBlue.to_string(), "dark blue");
    }

    #[test]
    fn an_unknown_word_is_refused_with_its_name_and_the_known_ones() {
        let error = "green".parse::<Colour>().unwrap_err();
        assert_eq!(error.to_string(), "\"green\" is not a known Colour");
        let json = serde_json::from_str::<Colour>("\"green\"")
            .unwrap_err()
            .to_string();
        assert!(json.contains("red") && json.contains("dark blue"), "{json}");
    }
}
