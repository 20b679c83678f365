//! The two facts sockgate reads out of a stored `sess` text: the passport
//! user and `cookie.originalMaxAge`. Read straight from the text, skipping
//! everything else, instead of building the whole JSON tree first: a
//! handshake reads every session it authenticates, and the tree (a map per
//! object, a string per key and value) was most of what reading cost.
//!
//! Reads what `rules::passport_user` and `rules::original_max_age`
//! read of `serde_json::from_str::<Value>(text)`, for every text that
//! parses (a property test holds them to it): a duplicate key counts by its
//! last value, as `JSON.parse` does, and a value of the wrong type means the
//! fact is absent.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::session::rules::{self, UserId};

/// What a stored session says; all absent when its text is not JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessFacts {
    /// `sess.passport.user` (or its `id`), as passport reads it.
    pub user: Option<UserId>,
    /// `sess.cookie.originalMaxAge` in ms, when it is a number.
    pub original_max_age_ms: Option<f64>,
}

/// The facts of a stored `sess` text.
pub fn read(text: &str) -> SessFacts {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut top = Top::default();
    let read = (&mut de)
        .deserialize_any(Fields(&mut top))
        .and_then(|()| de.end());
    match read {
        Ok(()) => SessFacts {
            user: top.user.as_ref().and_then(rules::user_in),
            original_max_age_ms: top.max_age.as_ref().and_then(Value::as_f64),
        },
        Err(_) => SessFacts::default(),
    }
}

/// The fields of one JSON object that are kept; every other key, and
/// every value of a kind that is not an object, is skipped unread.
trait Pick {
    /// Reads the value of `key` (kept or skipped) from `map`.
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// The whole text: `passport` and `cookie`.
#[derive(Default)]
struct Top {
    user: Option<Value>,
    max_age: Option<Value>,
}

/// One key of an object, its value kept whole: `passport.user` (a number,
/// a string or a small object) or `cookie.originalMaxAge`.
struct One {
    key: &'static str,
    value: Option<Value>,
}

impl One {
    fn new(key: &'static str) -> Self {
        Self { key, value: None }
    }
}

impl Pick for Top {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            // A later `passport` replaces an earlier one whole, even when it
            // holds no user.
            "passport" => self.user = map.next_value_seed(Object(One::new("user")))?.value,
            "cookie" => {
                self.max_age = map
                    .next_value_seed(Object(One::new("originalMaxAge")))?
                    .value
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl Pick for One {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == self.key {
            self.value = Some(map.next_value()?);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads a value into the `P` it starts with when it is an object, and
/// leaves that `P` as it was when it is anything else.
struct Object<P>(P);

impl<'de, P: Pick> DeserializeSeed<'de> for Object<P> {
    type Value = P;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<P, D::Error> {
        let mut picked = self.0;
        de.deserialize_any(Fields(&mut picked))?;
        Ok(picked)
    }
}

/// The visitor filling a [`Pick`]: an object's keys are compared in place,
/// never copied.
struct Fields<'p, P>(&'p mut P);

impl<'de, P: Pick> Visitor<'de> for Fields<'_, P> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            self.0.field(&key, &mut map)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(Key)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(key.into())
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(key.to_owned().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the server read before: the whole tree, then the two facts.
    fn through_value(text: &str) -> SessFacts {
        match serde_json::from_str::<Value>(text) {
            Ok(sess) => SessFacts {
                user: rules::passport_user(&sess),
                original_max_age_ms: rules::original_max_age(&sess),
            },
            Err(_) => SessFacts::default(),
        }
    }

    #[test]
    fn the_forms_passport_and_express_session_write() {
        let read = |t: &str| read(t);
        let node = r#"{"cookie":{"originalMaxAge":86400000,"expires":"2026-12-06T00:00:00.000Z","httpOnly":true,"path":"/"},"passport":{"user":42}}"#;
        assert_eq!(
            read(node),
            SessFacts {
                user: Some(UserId::new("42")),
                original_max_age_ms: Some(86_400_000.0)
            }
        );
        let object = r#"{"passport":{"user":{"id":"u-7","username":"x"}},"cookie":{}}"#;
        assert_eq!(read(object).user, Some(UserId::new("u-7")));
        assert_eq!(
            read(r#"{"passport":{"user":1.5}}"#).user,
            Some(UserId::new("1.5"))
        );
        assert_eq!(
            read(r#"{"passport":{}}"#),
            SessFacts::default(),
            "logged out"
        );
        assert_eq!(read(r#"{"passport":{"user":""}}"#).user, None);
        // Escaped keys are keys all the same.
        assert_eq!(
            read(r#"{"pass\u0070ort":{"\u0075ser":"a\u0000b"}}"#).user,
            Some(UserId::new("a\0b"))
        );
        // The last duplicate counts, as JSON.parse has it.
        assert_eq!(
            read(r#"{"passport":{"user":1},"passport":{"user":2}}"#).user,
            Some(UserId::new("2"))
        );
        assert_eq!(read(r#"{"passport":{"user":1},"passport":7}"#).user, None);
        // Not JSON, or JSON of another kind: nobody.
        for text in [
            "",
            "{",
            "not json",
            r#"{"passport":{"user":1}} x"#,
            "[1,2]",
            "\"s\"",
            "null",
            "3",
        ] {
            assert_eq!(read(text), SessFacts::default(), "{text:?}");
        }
        assert_eq!(
            read(r#"{"cookie":{"originalMaxAge":"60000"}}"#).original_max_age_ms,
            None
        );
        assert_eq!(
            read(r#"{"cookie":{"originalMaxAge":null}}"#).original_max_age_ms,
            None
        );
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            "[a-z\\\\\"\u{0}-\u{1f}é]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u0000""#.to_owned()),
        ]
    }

    /// An object of `fields` (keys may repeat), as JSON text.
    fn object(
        fields: impl Strategy<Value = (&'static str, String)>,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec(fields, 0..5).prop_map(|kv| {
            let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    /// Any JSON, the keys that matter among its keys at every depth.
    fn any_json() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("\"passport\""),
            Just("\"user\""),
            Just("\"id\""),
            Just("\"cookie\""),
            Just("\"originalMaxAge\""),
            Just("\"pass\\u0070ort\""),
            Just("\"other\""),
        ];
        leaf().prop_recursive(4, 40, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                object((key.clone(), inner)),
            ]
        })
    }

    /// A session as express-session and passport shape it, every part
    /// sometimes of the wrong kind, repeated or missing.
    fn sess_text() -> impl Strategy<Value = String> {
        let user = prop_oneof![
            3 => leaf(),
            1 => object((prop_oneof![Just("\"id\""), Just("\"username\"")], leaf())),
            1 => any_json(),
        ];
        let passport = prop_oneof![
            4 => object((prop_oneof![3 => Just("\"user\""), 1 => Just("\"other\"")], user)),
            1 => any_json(),
        ];
        let cookie = prop_oneof![
            4 => object((prop_oneof![Just("\"originalMaxAge\""), Just("\"expires\"")], leaf())),
            1 => any_json(),
        ];
        prop_oneof![
            6 => object(prop_oneof![
                3 => passport.prop_map(|v| ("\"passport\"", v)),
                2 => cookie.prop_map(|v| ("\"cookie\"", v)),
                1 => any_json().prop_map(|v| ("\"other\"", v)),
            ]),
            1 => any_json(),
        ]
    }

    proptest! {
        #[test]
        fn reads_what_the_whole_tree_reads(text in sess_text()) {
            prop_assert_eq!(read(&text), through_value(&text));
        }

        #[test]
        fn garbled_text_reads_as_the_whole_tree_reads(text in sess_text(), cut in 0usize..64, junk in "[ -~]{0,3}") {
            // Cut and spliced: mostly not JSON, and nobody's.
            let mut garbled: String = text.chars().take(cut).collect();
            garbled.push_str(&junk);
            prop_assert_eq!(read(&garbled), through_value(&garbled));
        }
    }
}
