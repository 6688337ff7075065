//! Log set-up: tracing events to stderr (stdout stays clean for data), with
//! a filter that a configuration reload can replace.

use std::{io::IsTerminal, sync::OnceLock};

use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

use crate::config::LogFormat;

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The installed filter, once [`init`] has run in this process.
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the global subscriber. `directive` is a tracing `EnvFilter`
/// directive that the config has already validated.
pub fn init(format: LogFormat, directive: &str) {
    let filter = EnvFilter::builder()
        .parse(directive)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    // A second init (in tests) keeps the first subscriber; that is fine.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the log filter (SIGHUP reload). `directive` was validated by
/// the config. Without an installed subscriber there is nothing to change.
pub fn set_level(directive: &str) -> Result<(), String> {
    let Some(handle) = FILTER.get() else {
        return Ok(());
    };
    let filter = EnvFilter::builder()
        .parse(directive)
        .map_err(|error| format!("bad filter directive {directive:?}: {error}"))?;
    handle.reload(filter).map_err(|error| error.to_string())
}
