//! What ships beside the binaries: the systemd units are hardened and valid
//! against an installed copy of the binary. `systemd-analyze` works offline
//! here (no running systemd is needed); `.ci/run` installs it.

use std::process::{Command, Stdio};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");

fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some("systemd-analyze");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "systemd-analyze is not installed (.ci/run installs the systemd package)"
    );
    eprintln!("SKIPPING: systemd-analyze is not installed (apt-get install systemd)");
    None
}

/// The units with `ExecStart` pointing at this build's binary, as if it
/// had been installed.
fn installed_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("echo-server");
    std::fs::copy(SERVER, &binary).unwrap();
    let service = include_str!("../deploy/echod.service")
        .replace("/usr/local/bin/echo-server", &binary.display().to_string());
    std::fs::write(dir.path().join("echod.service"), service).unwrap();
    std::fs::write(
        dir.path().join("echod.socket"),
        include_str!("../deploy/echod.socket"),
    )
    .unwrap();
    dir
}

#[test]
fn the_systemd_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let units = installed_units();
    let output = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(units.path().join("echod.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for echod.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} is over 2.0:\n{text}");
}

#[test]
fn the_systemd_units_verify_against_an_installed_binary() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let units = installed_units();
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(units.path().join("echod.service"))
        .arg(units.path().join("echod.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("echod"),
        "warnings about the units:\n{stderr}"
    );
}
