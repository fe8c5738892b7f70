//! Decoding the enum fields of the wire's messages. prost keeps an enum field as the `i32` that
//! arrived, which may be a value this build does not know; these decode it into the enum or an
//! [`EnumError`] naming the field and the value. Every `_UNSPECIFIED` value is 0.

use crate::error::EnumError;

/// Decodes `value` of an enum field that must be given: 0 (`_UNSPECIFIED`) is an error too.
/// `field` names the field in the error, e.g. "the training spec's model".
pub fn specified<E: TryFrom<i32>>(
    value: i32,
    field: impl FnOnce() -> String,
) -> Result<E, EnumError> {
    if value == 0 {
        return Err(EnumError::Unspecified { field: field() });
    }
    known(value, field)
}

/// Decodes `value` of an enum field whose 0 (`_UNSPECIFIED`) is a meaningful default (`Transform`:
/// none; `Combine`: the sum).
pub fn known<E: TryFrom<i32>>(value: i32, field: impl FnOnce() -> String) -> Result<E, EnumError> {
    E::try_from(value).map_err(|_| EnumError::Unknown {
        field: field(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ModelKind, Transform};

    #[test]
    fn an_unknown_or_unspecified_value_is_named_with_its_field() {
        let model = |v| specified::<ModelKind>(v, || "the training spec's model".into());
        assert_eq!(model(1), Ok(ModelKind::LogisticRegression));
        assert_eq!(
            model(0).unwrap_err().to_string(),
            "the training spec's model is not given"
        );
        let unknown = model(99).unwrap_err().to_string();
        assert!(
            unknown.starts_with("the training spec's model is 99"),
            "{unknown}"
        );
        assert_eq!(
            known::<Transform>(0, String::new),
            Ok(Transform::Unspecified)
        );
        assert!(known::<Transform>(7, String::new).is_err());
    }
}
