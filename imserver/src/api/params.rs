//! Reading a call's `params` object field by field, so every refusal names the field at fault
//! (`receivers[2]`, not "invalid type at column 57"). Unknown fields are refused too: a typo
//! (`receiver` for `receivers`) must not silently change what a call does.

use imclient::{ChanName, ClientId};
use serde_json::{Map, Value};

use super::errors::ApiError;

/// A call's parameters.
#[derive(Debug)]
pub struct Params {
    fields: Map<String, Value>,
}

impl Params {
    /// `value` as the parameters of a call that takes the fields in `allowed`. `null` (no
    /// parameters given) reads as `{}`.
    pub fn new(value: Value, allowed: &[&str]) -> Result<Self, ApiError> {
        let fields = match value {
            Value::Object(fields) => fields,
            Value::Null => Map::new(),
            _ => {
                return Err(ApiError::bad_field(
                    "invalid_params",
                    "params",
                    "the parameters must be a JSON object",
                ));
            }
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_field(
                "unknown_field",
                unknown.clone(),
                format!(
                    "unknown field {unknown:?}; this call takes: {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Self { fields })
    }

    /// The fields, for a caller that takes one apart itself.
    pub fn into_fields(self) -> Map<String, Value> {
        self.fields
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&Value, ApiError> {
        self.get(field).ok_or_else(|| {
            ApiError::bad_field("missing_field", field, format!("{field} is required"))
        })
    }

    fn string<'a>(value: &'a Value, field: &str) -> Result<&'a str, ApiError> {
        value.as_str().ok_or_else(|| {
            ApiError::bad_field("invalid_type", field, format!("{field} must be a string"))
        })
    }

    /// A required client id.
    pub fn client(&self, field: &str) -> Result<String, ApiError> {
        client_id(Self::string(self.required(field)?, field)?, field)
    }

    /// A required channel name.
    pub fn chan(&self, field: &str) -> Result<String, ApiError> {
        let name = Self::string(self.required(field)?, field)?;
        ChanName::new(name)
            .map(|c| c.as_str().to_owned())
            .map_err(|e| ApiError::from(e).at(field))
    }

    /// A required, non-empty array of client ids.
    pub fn clients(&self, field: &str) -> Result<Vec<String>, ApiError> {
        let list = self.required(field)?.as_array().ok_or_else(|| {
            ApiError::bad_field(
                "invalid_type",
                field,
                format!("{field} must be an array of client ids"),
            )
        })?;
        if list.is_empty() {
            return Err(ApiError::bad_field(
                "missing_field",
                field,
                format!("{field} must name at least one client"),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("{field}[{i}]");
                client_id(Self::string(v, &at)?, &at)
            })
            .collect()
    }

    /// Either `one` (a client id) or `many` (client ids), exactly one of them.
    pub fn client_or_clients(&self, one: &str, many: &str) -> Result<Vec<String>, ApiError> {
        match (self.get(one), self.get(many)) {
            (Some(_), None) => Ok(vec![self.client(one)?]),
            (None, Some(_)) => self.clients(many),
            _ => Err(ApiError::bad_field(
                "missing_field",
                one,
                format!("give either {one} (one client id) or {many} (an array of them)"),
            )),
        }
    }

    /// A required JSON value of any type.
    pub fn payload(&self, field: &str) -> Result<&Value, ApiError> {
        self.required(field)
    }

    /// Any JSON value, `null` when absent.
    pub fn value_or_null(&self, field: &str) -> Value {
        self.get(field).cloned().unwrap_or(Value::Null)
    }

    /// An optional boolean.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                ApiError::bad_field(
                    "invalid_type",
                    field,
                    format!("{field} must be true or false"),
                )
            }),
        }
    }

    /// An optional string.
    pub fn opt_string(&self, field: &str) -> Result<Option<String>, ApiError> {
        self.get(field)
            .map(|v| Self::string(v, field).map(str::to_owned))
            .transpose()
    }

    /// The caller's `message_id` (checked by imclient when sent), or a fresh one: a retried
    /// request under the same id is shown once.
    pub fn message_id(&self) -> Result<String, ApiError> {
        Ok(self
            .opt_string("message_id")?
            .unwrap_or_else(imclient::new_message_id))
    }

    /// An optional whole number in `1..=max`.
    pub fn count_or(&self, field: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(default);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_field(
                    "invalid_type",
                    field,
                    format!("{field} must be a whole number from 1 to {max}"),
                )
            })
    }
}

impl Params {
    /// An optional duration in milliseconds, 0 to `max`; `default` when absent.
    pub fn millis_or(&self, field: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(default);
        };
        v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
            ApiError::bad_field(
                "invalid_type",
                field,
                format!("{field} must be a whole number of milliseconds from 0 to {max}"),
            )
        })
    }
}

fn client_id(id: &str, field: &str) -> Result<String, ApiError> {
    ClientId::new(id)
        .map(|c| c.as_str().to_owned())
        .map_err(|e| ApiError::from(e).at(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refusals_name_the_field() {
        let p = Params::new(json!({"receivers": ["bob", ""]}), &["receivers"]).unwrap();
        let e = p.clients("receivers").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_client_id", Some("receivers[1]"))
        );
        let e = Params::new(json!({"receiver": ["bob"]}), &["receivers"]).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("receiver"))
        );
        let p = Params::new(json!({}), &["chan"]).unwrap();
        assert_eq!(p.chan("chan").unwrap_err().field.as_deref(), Some("chan"));
        let p = Params::new(json!({"chan": "two words"}), &["chan"]).unwrap();
        assert_eq!(p.chan("chan").unwrap_err().code, "invalid_chan");
    }
}
