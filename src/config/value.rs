//! A setting's value as a source gives it, and the parsers every key's
//! entry uses, so a value is checked the same way from a flag, a variable
//! or the file.

use std::{path::PathBuf, time::Duration};

/// The longest duration any setting takes: one year.
pub const MAX_DURATION_SECS: f64 = 31_536_000.0;
/// The shortest non-zero duration: one millisecond (below it a timer
/// would round to zero, which means "off").
pub const MIN_DURATION_SECS: f64 = 0.001;

/// Text from flags and the environment, typed values from TOML.
pub enum Value {
    Text(String),
    List(Vec<String>),
    Toml(toml::Value),
}

impl Value {
    pub fn text(self) -> Result<String, String> {
        match self {
            Value::Text(text) => Ok(text),
            Value::Toml(toml::Value::String(text)) => Ok(text),
            Value::Toml(other) => Err(format!("expected a string, found {}", other.type_str())),
            Value::List(_) => Err("expected one value".into()),
        }
    }

    /// A list: repeated flags, a comma-separated variable, or a TOML array.
    /// An empty variable (`ECHOD_UDP=`) is an empty list.
    pub fn list(self) -> Result<Vec<String>, String> {
        match self {
            Value::List(items) => Ok(items),
            Value::Text(text) if text.trim().is_empty() => Ok(Vec::new()),
            Value::Text(text) => Ok(text.split(',').map(|item| item.trim().to_owned()).collect()),
            Value::Toml(toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| Value::Toml(item).text())
                .collect::<Result<_, _>>()
                .map_err(|_| "expected an array of strings".into()),
            Value::Toml(other) => Err(format!(
                "expected an array of strings, found {}",
                other.type_str()
            )),
        }
    }

    /// Each item of a list parsed with `FromStr`.
    pub fn parsed_list<T>(self) -> Result<Vec<T>, String>
    where
        T: std::str::FromStr<Err = String>,
    {
        self.list()?.iter().map(|item| item.parse()).collect()
    }

    pub fn integer(self, min: u64, max: u64) -> Result<usize, String> {
        let value = match self {
            Value::Text(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("expected a whole number, found {text:?}"))?,
            Value::Toml(toml::Value::Integer(value)) => u64::try_from(value)
                .map_err(|_| format!("must be at least {min}, found {value}"))?,
            Value::Toml(other) => {
                return Err(format!("expected an integer, found {}", other.type_str()))
            }
            Value::List(_) => return Err("expected one value".into()),
        };
        if !(min..=max).contains(&value) {
            return Err(format!("must be from {min} to {max}, found {value}"));
        }
        usize::try_from(value).map_err(|_| format!("{value} is too large for this machine"))
    }

    /// A whole number from `min` to `max`, in the setting's own type.
    pub fn bounded<T>(self, min: T, max: T) -> Result<T, String>
    where
        T: Into<u64> + TryFrom<u64>,
    {
        let value = self.integer(min.into(), max.into())? as u64;
        T::try_from(value).map_err(|_| format!("{value} is out of range"))
    }

    /// A file path; empty means none.
    pub fn path(self) -> Result<Option<PathBuf>, String> {
        let text = self.text()?;
        Ok((!text.trim().is_empty()).then(|| PathBuf::from(text)))
    }

    /// Text parsed with `FromStr`.
    pub fn parsed<T>(self) -> Result<T, String>
    where
        T: std::str::FromStr<Err = String>,
    {
        self.text()?.parse()
    }

    pub fn boolean(self) -> Result<bool, String> {
        match self {
            Value::Toml(toml::Value::Boolean(value)) => Ok(value),
            Value::Text(text) => match text.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("expected true or false, found {text:?}")),
            },
            Value::Toml(other) => Err(format!("expected a boolean, found {}", other.type_str())),
            Value::List(_) => Err("expected one value".into()),
        }
    }

    /// A duration in seconds, whole or fractional, from 0.001 s to one
    /// year; `0` is `None` ("off"). Anything else is refused rather than
    /// rounded: 1e-10 would truncate to zero and silently mean "never",
    /// and 1e19 would overflow the clock arithmetic of every connection.
    pub fn optional_seconds(self) -> Result<Option<Duration>, String> {
        let seconds = match self {
            Value::Text(text) => text
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("expected a number of seconds, found {text:?}"))?,
            Value::Toml(toml::Value::Integer(value)) => value as f64,
            Value::Toml(toml::Value::Float(value)) => value,
            Value::Toml(other) => {
                return Err(format!(
                    "expected a number of seconds, found {}",
                    other.type_str()
                ))
            }
            Value::List(_) => return Err("expected one value".into()),
        };
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(format!(
                "expected a non-negative number of seconds, found {seconds}"
            ));
        }
        if seconds == 0.0 {
            return Ok(None);
        }
        if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&seconds) {
            return Err(format!(
                "must be 0 (off) or from {MIN_DURATION_SECS} to {MAX_DURATION_SECS} seconds (one year), found {seconds}"
            ));
        }
        Ok(Some(Duration::from_secs_f64(seconds)))
    }

    /// A duration that may be zero (`shutdown_grace = 0`: cut at once).
    pub fn seconds(self) -> Result<Duration, String> {
        Ok(self.optional_seconds()?.unwrap_or(Duration::ZERO))
    }

    /// A duration that must be more than zero.
    pub fn positive_seconds(self) -> Result<Duration, String> {
        self.optional_seconds()?
            .ok_or_else(|| "must be more than 0 seconds".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_zero_or_from_a_millisecond_to_a_year() {
        let secs = |text: &str| Value::Text(text.into()).optional_seconds();
        assert_eq!(secs("0"), Ok(None));
        assert_eq!(secs("0.001"), Ok(Some(Duration::from_millis(1))));
        assert_eq!(secs("31536000"), Ok(Some(Duration::from_secs(31_536_000))));
        for bad in ["1e19", "1e-10", "0.0009", "31536000.5", "-1", "inf", "NaN"] {
            assert!(secs(bad).is_err(), "{bad} accepted");
        }
    }
}
