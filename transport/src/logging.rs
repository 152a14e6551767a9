//! How both programs log: to stderr, filtered by `--log` (or `RUST_LOG`), in tracing's target
//! syntax (`warn`, `info,sandstep::process=debug`). The filter is `Targets`, not `EnvFilter`:
//! no span or field filters, and so no regular-expression engine in the gateway's binary.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Why a log filter was refused.
#[derive(Debug, thiserror::Error)]
#[error("log filter `{filter}`: {cause}")]
pub struct FilterError {
    pub filter: String,
    pub cause: String,
}

/// The filter `RUST_LOG` names, else `fallback` (the `--log` option).
pub fn filter(fallback: &str) -> Result<Targets, FilterError> {
    let text = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    text.parse::<Targets>().map_err(|e| FilterError {
        filter: text.clone(),
        cause: e.to_string(),
    })
}

/// Installs the subscriber: lines to stderr, without the target.
pub fn init(fallback: &str) -> Result<(), FilterError> {
    let filter = filter(fallback)?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(filter)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    #[test]
    fn targets_and_levels_parse_and_nonsense_is_refused() {
        let t = super::filter("info,sandstep::process=debug").unwrap();
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        assert!(super::filter("warn").is_ok());
        assert!(super::filter("=nope=").is_err());
    }
}
