//! The example systemd unit (deploy/imserver.service) as systemd reads it: `systemd-analyze
//! verify` accepts it without a warning, and `systemd-analyze security` rates it as sandboxed.
//! Both run offline, without systemd as the init system.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

const UNIT: &str = include_str!("../../deploy/imserver.service");

/// Highest `systemd-analyze security` exposure allowed, in its tenths (it prints 1.5 for 15).
/// The unit scores 1.5 with systemd 252, 3.0 without its system call filter and 3.3 without
/// the empty capability bounding set; the margin is for other versions' weights, so the
/// settings most of the score hangs on are also checked by name below.
const MAX_EXPOSURE: u32 = 20;

/// The unit with ExecStart= on the binary this test run built, since verify checks that the
/// program exists, written to a directory of its own.
fn unit_with_built_binary(name: &str) -> Result<PathBuf> {
    let bin = env!("CARGO_BIN_EXE_imserver");
    let mut replaced = 0;
    let unit: String = UNIT
        .lines()
        .map(|line| {
            if line.starts_with("ExecStart=") {
                replaced += 1;
                format!("ExecStart={bin}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    ensure!(replaced == 1, "the unit has {replaced} ExecStart= lines");
    let dir = std::env::temp_dir().join(format!("imtest-systemd-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("imserver.service");
    std::fs::write(&path, unit)?;
    Ok(path)
}

/// Runs systemd-analyze; its exit status and everything it printed.
fn analyze(args: &[&str], unit: &Path) -> Result<(bool, String)> {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .context(
            "systemd-analyze is not installed (Debian package systemd): run scripts/test.sh, \
             which installs it",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn remove_dir(unit: &Path) {
    if let Some(dir) = unit.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn systemd_accepts_the_example_unit_without_warnings() -> Result<()> {
    let unit = unit_with_built_binary("verify")?;
    let (ok, text) = analyze(&["verify"], &unit)?;
    remove_dir(&unit);
    // An unknown key or a value systemd cannot parse is only a warning ("…, ignoring") with
    // exit status 0, and the setting silently does nothing: any line about the unit fails.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("imserver.service"))
        .collect();
    assert!(
        ok && about_unit.is_empty(),
        "systemd-analyze verify {}:\n{text}",
        unit.display()
    );
    Ok(())
}

#[test]
fn the_example_unit_is_sandboxed_with_room_for_connections() -> Result<()> {
    let unit = unit_with_built_binary("security")?;
    let threshold = format!("--threshold={MAX_EXPOSURE}");
    let (ok, text) = analyze(&["security", "--offline=yes", &threshold], &unit)?;
    remove_dir(&unit);
    assert!(
        ok,
        "exposure above {}.{} ({}):\n{text}",
        MAX_EXPOSURE / 10,
        MAX_EXPOSURE % 10,
        unit.display()
    );
    for setting in [
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE=1048576",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            UNIT.lines().any(|l| l == setting),
            "the unit lacks {setting}"
        );
    }
    Ok(())
}
