//! The configuration's checks: what the node refuses to start with, and what it never shows.

use super::*;
use imclient::token::TokenError;

fn parse(args: &[&str]) -> Config {
    let mut all = vec!["imserver"];
    all.extend_from_slice(args);
    Config::try_parse_from(all).expect("parses")
}

#[test]
fn refuses_to_run_without_a_secret_outside_dev() {
    assert!(matches!(
        parse(&[]).validate(),
        Err(ConfigError::Secret(TokenError::NoSecret))
    ));
    assert!(matches!(
        parse(&["--token-secret", ""]).validate(),
        Err(ConfigError::Secret(TokenError::NoSecret))
    ));
    assert!(matches!(
        parse(&["--token-secret", DEV_SECRET]).validate(),
        Err(ConfigError::Secret(TokenError::DevSecret))
    ));
    assert!(matches!(
        parse(&["--token-secret", "short"]).validate(),
        Err(ConfigError::Secret(TokenError::WeakSecret))
    ));
    assert!(parse(&["--dev"]).validate().is_ok());
    assert!(
        parse(&["--token-secret", "0123456789abcdef0123"])
            .validate()
            .is_ok()
    );
}

#[test]
fn dev_mode_stays_on_loopback_unless_forced() {
    assert!(parse(&["--dev"]).validate().is_ok());
    assert!(matches!(
        parse(&["--dev", "--listen", "0.0.0.0:6001"]).validate(),
        Err(ConfigError::DevPublic(_))
    ));
    assert!(
        parse(&["--dev", "--dev-public", "--listen", "0.0.0.0:6001"])
            .validate()
            .is_ok()
    );
    assert!(
        parse(&[
            "--token-secret",
            "0123456789abcdef0123",
            "--listen",
            "0.0.0.0:6001"
        ])
        .validate()
        .is_ok()
    );
}

#[test]
fn the_connection_cap_fits_under_the_open_file_limit() {
    let mut c = parse(&["--dev", "--max-connections", "10000"]);
    assert_eq!(c.fit_open_files(20_000).ok(), Some(None));
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.fit_open_files(1024).ok(), Some(Some(10_000)));
    assert_eq!(c.max_connections, 1024 - RESERVED_FILES as usize);
    assert!(matches!(
        c.fit_open_files(100),
        Err(ConfigError::TooFewFiles { .. })
    ));
    let mut c = parse(&["--dev", "--key-prefix", "appA:chan"]);
    assert!(matches!(c.validate(), Err(ConfigError::KeyPrefix(_))));
    c.key_prefix = "appA".into();
    assert!(c.validate().is_ok());
}

#[test]
fn token_keys_that_cannot_be_used_are_refused_with_the_reason() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../imclient/tests/keys");
    let with = |entry: String| parse(&["--token-key", &entry]).validate();
    assert!(with(format!("k1={keys}/ed1.pub.pem")).is_ok());
    assert!(with(format!("k2={keys}/rsa1.pub.pem")).is_ok());
    for (entry, says) in [
        (format!("{keys}/ed1.pub.pem"), "KEY_ID=PATH"),
        (format!("k1={keys}/missing.pem"), "cannot read"),
        (format!("k1={keys}/README.md"), "PEM"),
    ] {
        let err = with(entry.clone()).expect_err(&entry).to_string();
        assert!(err.contains(says), "{entry}: {err}");
    }
    // Without keys or --dev, a secret is required.
    assert!(matches!(
        parse(&[]).validate(),
        Err(ConfigError::Secret(TokenError::NoSecret))
    ));
}

#[test]
fn heartbeat_timeout_must_be_twice_the_interval() {
    let c = parse(&[
        "--dev",
        "--heartbeat-interval-ms",
        "1000",
        "--heartbeat-timeout-ms",
        "1500",
    ]);
    assert!(matches!(c.validate(), Err(ConfigError::Heartbeat { .. })));
}

#[test]
fn the_api_needs_a_long_enough_key_outside_dev() {
    let secret = ["--token-secret", "0123456789abcdef0123"];
    let with = |extra: &[&str]| {
        let mut args = secret.to_vec();
        args.extend_from_slice(extra);
        parse(&args).validate()
    };
    assert!(matches!(
        with(&["--api-listen", "127.0.0.1:0"]),
        Err(ConfigError::Api(_))
    ));
    assert!(matches!(
        with(&["--api-listen", "127.0.0.1:0", "--api-key", "short"]),
        Err(ConfigError::Api(_))
    ));
    assert!(
        with(&[
            "--api-listen",
            "127.0.0.1:0",
            "--api-key",
            "first-key-0123456789,second-key-0123456789"
        ])
        .is_ok()
    );
    assert!(
        parse(&["--dev", "--api-listen", "127.0.0.1:0"])
            .validate()
            .is_ok()
    );
    assert!(matches!(
        parse(&["--dev", "--api-listen", "0.0.0.0:7001"]).validate(),
        Err(ConfigError::DevPublic(_))
    ));
    // Only the node's own settings without an API listener: no key needed.
    assert!(with(&[]).is_ok());
}

#[test]
fn api_keys_never_show_in_debug_output() {
    let config = parse(&["--dev", "--api-key", "a-very-secret-api-key-0123"]);
    assert_eq!(config.api_keys.len(), 1);
    assert!(!format!("{config:?}").contains("a-very-secret"));
}

#[test]
fn webhooks_need_a_secret_that_decodes_and_never_show_it() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let token = ["--token-secret", "0123456789abcdef0123"];
    let with = |extra: &[&str]| {
        let mut args = token.to_vec();
        args.extend_from_slice(extra);
        Config::try_parse_from(std::iter::once("imserver").chain(args))
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
    };
    let url = ["--webhook-url", "https://hooks.example.com/im"];
    let err = with(&url).expect_err("no secret").to_string();
    assert!(err.contains("--webhook-secret"), "{err}");
    assert!(
        parse(&["--dev", "--webhook-url", "http://127.0.0.1:9/h"])
            .validate()
            .is_ok()
    );
    let two = format!("{secret},whsec_{}", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY");
    let config = with(&[url[0], url[1], "--webhook-secret", &two]).expect("valid");
    assert_eq!(config.webhook_secrets.len(), 2);
    assert!(!format!("{config:?}").contains("MfKQ9r8G"));
    for bad in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not*base64",
        "whsec_c2hvcnQ=",
    ] {
        let err = with(&[url[0], url[1], "--webhook-secret", bad]).expect_err(bad);
        assert!(err.contains("whsec_"), "{err}");
        assert!(!err.contains(bad), "the secret is repeated in {err}");
    }
    let err = with(&["--webhook-url", "ftp://x/", "--webhook-secret", secret]).expect_err("ftp");
    assert!(err.contains("http"), "{err}");
}

#[test]
fn redis_timeouts_are_settings_checked_at_start() {
    let config = Config::try_parse_from([
        "imserver",
        "--dev",
        "--redis-connect-timeout-ms",
        "1500",
        "--redis-response-timeout-ms",
        "3000",
    ])
    .expect("parses");
    config.validate().expect("valid");
    assert_eq!(
        config.redis_timeouts().response,
        std::time::Duration::from_secs(3)
    );
    let short = Config::try_parse_from(["imserver", "--dev", "--redis-response-timeout-ms", "100"])
        .expect("parses");
    let err = short.validate().expect_err("too short").to_string();
    assert!(err.contains("--redis-response-timeout-ms"), "{err}");
}

#[test]
fn the_shutdown_grace_leaves_the_rest_of_the_shutdown_time() {
    assert!(parse(&["--dev"]).validate().is_ok());
    assert!(matches!(
        parse(&["--dev", "--shutdown-grace-ms", "5000"]).validate(),
        Err(ConfigError::ShutdownGrace {
            grace: 5000,
            timeout: 10_000
        })
    ));
    assert!(
        parse(&[
            "--dev",
            "--shutdown-grace-ms",
            "5000",
            "--shutdown-timeout-ms",
            "12000"
        ])
        .validate()
        .is_ok()
    );
}
